"""Update encoders: unbiased quantization, exact bit counts, top-k, and upload times that follow
the encoded size through the latency model and the planner."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from fedjaxscale.algorithms import encoders
from fedjaxscale.scheduler import SyncConfig, SyncPlanner
from fedjaxscale.systems import LatencyModel, generate_traces


def _x(d=37, seed=0):
  return jnp.asarray(np.random.default_rng(seed).normal(size=d).astype(np.float32))


@pytest.mark.parametrize("bits", [1, 4])
@pytest.mark.parametrize("rotate", [False, True])
def test_quantizer_is_unbiased(bits, rotate):
  enc, x, n = encoders.stochastic_quantizer(bits, rotate), _x(), 4000
  keys = jax.random.split(jax.random.key(0), n)
  decoded = jax.jit(jax.vmap(lambda k: enc.decode(enc.encode(x, k), x.shape[0])))(keys)
  decoded = np.asarray(decoded, np.float64)
  mean, sem = decoded.mean(0), decoded.std(0) / np.sqrt(n) + 1e-7
  assert np.all(np.abs(mean - np.asarray(x)) < 5 * sem + 1e-5)
  if not rotate:  # every decoded value is one of the 2**bits levels between min and max
    lo, hi = float(x.min()), float(x.max())
    levels = lo + (hi - lo) * np.arange(2**bits) / (2**bits - 1)
    assert np.all(np.min(np.abs(decoded[:50, :, None] - levels), axis=-1) < 1e-5)


@pytest.mark.parametrize("bits", [1, 3, 8, 16])
def test_quantizer_bit_count_is_exact(bits):
  for d in (1, 37, 64, 1000):
    x = _x(d)
    plain, rot = encoders.stochastic_quantizer(bits), encoders.stochastic_quantizer(bits, rotate=True)
    payload = plain.encode(x, jax.random.key(1))
    assert int(payload["q"].max()) < 2**bits and payload["q"].size == d  # b bits per entry ...
    assert plain.num_bits(d) == d * bits + 64  # ... plus min and max as float32
    pad = 1 << max(d - 1, 0).bit_length()
    assert jax.eval_shape(rot.encode, x, jax.random.key(1))["q"].size == pad and rot.num_bits(d) == pad * bits + 64
  assert encoders.stochastic_quantizer(32).num_bits(10) == 320  # 32 bits: float32 itself
  np.testing.assert_array_equal(encoders.stochastic_quantizer(32).encode(_x(), None), _x())


def test_hadamard_is_orthonormal_and_self_inverse():
  d = 16
  h = np.array([[1.0]])
  while h.shape[0] < d:
    h = np.block([[h, h], [h, -h]])
  x = np.asarray(_x(d))
  np.testing.assert_allclose(np.asarray(encoders.hadamard(jnp.asarray(x))), h @ x / 4.0, rtol=1e-5, atol=1e-6)
  np.testing.assert_allclose(np.asarray(encoders.hadamard(encoders.hadamard(jnp.asarray(x)))), x, atol=1e-5)


def test_rotation_shrinks_quantization_error():
  x = jnp.zeros(256).at[3].set(10.0) + 0.01 * _x(256)  # one spike: a wide range for the plain quantizer
  errs = []
  for rotate in (False, True):
    enc = encoders.stochastic_quantizer(2, rotate)
    dec = jax.jit(jax.vmap(lambda k, enc=enc: enc.decode(enc.encode(x, k), 256)))(
      jax.random.split(jax.random.key(0), 64)
    )
    errs.append(float(jnp.mean(jnp.sum((dec - x) ** 2, axis=1))))
  assert errs[1] < errs[0] / 3


def test_top_k_keeps_the_largest_and_counts_bits():
  x = jnp.asarray([0.1, -5.0, 0.2, 3.0, -0.05, 0.0, 1.0, 0.3])
  enc = encoders.top_k(3)
  np.testing.assert_array_equal(np.asarray(enc.decode(enc.encode(x, None), 8)), [0, -5.0, 0, 3.0, 0, 0, 1.0, 0])
  assert enc.num_bits(8) == 3 * (32 + 3) and enc.num_bits(1000) == 3 * (32 + 10)
  with pytest.raises(ValueError, match="k=3 entries but the update has only 2"):
    enc.num_bits(2)
  with pytest.raises(ValueError, match="bits"):
    encoders.stochastic_quantizer(0)
  with pytest.raises(ValueError, match="bits"):
    encoders.stochastic_quantizer(33)


def test_apply_encoder_on_a_tree_and_norm_bound():
  tree = {"a": _x(6).reshape(2, 3), "b": _x(4, seed=1)}
  out, _ = encoders.apply_encoder(encoders.identity(), tree, jax.random.key(0))
  jax.tree.map(lambda u, v: np.testing.assert_array_equal(np.asarray(u), np.asarray(v)), out, tree)
  out, norm = encoders.apply_encoder(encoders.stochastic_quantizer(1), tree, jax.random.key(0), scale_to_norm=0.5)
  got = np.sqrt(sum(float(jnp.sum(v**2)) for v in jax.tree.leaves(out)))
  assert got <= 0.5 * (1 + 1e-6) and float(norm) > 0.5


def test_compressed_upload_time_is_bits_over_bandwidth():
  traces = generate_traces(100, seed=0)
  d = 100_000
  for enc in (encoders.identity(), encoders.stochastic_quantizer(2, rotate=True), encoders.top_k(500)):
    bits = enc.num_bits(d)
    lm = LatencyModel(32 * d, local_steps=2, batch_size=5, update_bits=bits)
    clients = np.arange(100)
    np.testing.assert_allclose(lm.latency(traces, clients).upload, bits / (traces.up_kbps * 1000.0), rtol=1e-12)
    plan = SyncPlanner(traces, lm, SyncConfig(5), seed=0).plan_round()
    up = traces.up_kbps[plan.clients] * 1000.0
    np.testing.assert_allclose(plan.finish - plan.compute_end, bits / up, rtol=1e-9)


@pytest.mark.parametrize(
  "enc",
  [
    encoders.stochastic_quantizer(3),
    encoders.stochastic_quantizer(2, rotate=True),
    encoders.stochastic_quantizer(5, rotate=True, block=16),
    encoders.top_k(7),
  ],
  ids=lambda e: e.name,
)
def test_roundtrip_equals_decode_of_encode(enc):
  """The fused path the round runs is the wire format's decode(encode(.)) bit for bit."""
  x = jnp.concatenate([_x(50), jnp.asarray([0.5, -0.5, 0.5])])  # ties for top-k
  keys = jax.random.split(jax.random.key(2), 8)
  fused = jax.jit(jax.vmap(enc.roundtrip, in_axes=(None, 0)))(x, keys)
  wire = jax.jit(jax.vmap(lambda k: enc.decode(enc.encode(x, k), x.shape[0])))(keys)
  np.testing.assert_array_equal(np.asarray(fused), np.asarray(wire))


def test_top_k_breaks_ties_by_index_and_keeps_exactly_k():
  x = jnp.asarray([1.0, -2.0, 2.0, 0.5, 2.0, -2.0, 0.1])
  enc = encoders.top_k(3)
  np.testing.assert_array_equal(np.asarray(enc.roundtrip(x, None)), [0, -2.0, 2.0, 0, 2.0, 0, 0])
  payload = enc.encode(x, None)
  np.testing.assert_array_equal(np.asarray(payload["index"]), [1, 2, 4])
  assert int(jnp.count_nonzero(enc.roundtrip(jnp.zeros(9), None))) == 0  # all ties at 0: k zeros are "kept"


@pytest.mark.parametrize(
  "d,k", [(1, 1), (7, 7), (8, 3), (610, 61), (610, 609), (1000, 1), (1023, 1022), (4099, 400), (40_000, 3_001)]
)
def test_top_k_mask_matches_a_stable_sort(d, k):
  """The counting searches against NumPy: largest magnitudes first, ties by lowest index. The
  sizes cover three counts to a reduction (d < 1,024), two (d < 32,768) and one, and k = 1 (the
  search's one-entry-away finish from the start)."""
  rng = np.random.default_rng(d)
  x = rng.normal(size=(8, d)).astype(np.float32)
  x[1] = np.round(x[1])  # many ties, at the threshold too
  x[2, : d // 2] = 0.0
  x[3] = -np.abs(x[3])
  x[4] = rng.standard_cauchy(d)  # heavy tails: a wide bracket
  x[5] = 0.0  # every entry tied
  x[6, ::3] = np.inf  # infinities, and NaNs, which rank with them
  x[6, 1::5] = np.nan
  x[7, rng.permutation(d)[: d - k // 2]] = 0.0  # fewer than k non-zero: the k-th magnitude is 0

  def mask_of(v):
    return encoders._top_k_mask(v, k)

  # Under vmap the rows' searches stop at different passes (the normal rows early, the tied ones
  # never); one row at a time each search runs alone.
  got = np.asarray(jax.jit(jax.vmap(mask_of))(jnp.asarray(x)))
  for row, mask in zip(x, got):
    want = np.zeros(d, bool)
    magnitude = np.where(np.isnan(row), np.inf, np.abs(row))
    want[np.argsort(-magnitude, kind="stable")[:k]] = True
    np.testing.assert_array_equal(mask, want)
    np.testing.assert_array_equal(np.asarray(jax.jit(mask_of)(jnp.asarray(row))), want)


def test_block_rotation_pads_to_blocks_and_stays_unbiased():
  d, block = 100, 32
  enc = encoders.stochastic_quantizer(2, rotate=True, block=block)
  assert enc.num_bits(d) == 4 * block * 2 + 64  # 4 blocks of 32, not 128 (the next power of 2)
  assert enc.encode(_x(d), jax.random.key(0))["q"].size == 4 * block
  assert encoders.stochastic_quantizer(2, rotate=True, block=256).num_bits(d) == 128 * 2 + 64  # whole, padded
  x, n = _x(d), 3000
  decoded = np.asarray(jax.jit(jax.vmap(enc.roundtrip, in_axes=(None, 0)))(x, jax.random.split(jax.random.key(1), n)))
  sem = decoded.std(0) / np.sqrt(n) + 1e-7
  assert np.all(np.abs(decoded.mean(0) - np.asarray(x)) < 5 * sem + 1e-5)
  with pytest.raises(ValueError, match="power of 2"):
    encoders.stochastic_quantizer(2, rotate=True, block=48)


def test_rotation_takes_the_largest_block_that_pads_little():
  """The default blocks: 610 numbers (logistic regression 60 -> 10) are 3 blocks of 256, not one
  of 1,024 (25% fewer bits); 299,018 stay 74 blocks of 4,096 (1.3% longer than blocks of 256)."""
  enc = encoders.stochastic_quantizer(4, rotate=True)
  assert enc.num_bits(610) == 768 * 4 + 64
  assert enc.num_bits(299_018) == 74 * 4096 * 4 + 64
  assert enc.num_bits(5000) == 5 * 1024 * 4 + 64  # 8,192 in blocks of 4,096; 5,120 in 1,024
  assert enc.num_bits(300) == 512 * 4 + 64  # blocks of 256 pad as much: the larger block
  assert enc.encode(_x(610), jax.random.key(0))["q"].size == 768
  for d in range(1, 20_000, 37):
    blocks, m = encoders._rotation_shape(d, encoders.ROTATION_BLOCK)
    assert m & (m - 1) == 0 and blocks * m >= d > (blocks - 1) * m
    top = min(encoders._pow2(d), encoders.ROTATION_BLOCK)
    padded = {k: -(-d // k) * k for k in (2**i for i in range(14)) if min(top, encoders.MIN_BLOCK) <= k <= top}
    within = [k for k, n in padded.items() if n <= (1 + encoders.PADDING_SLACK) * min(padded.values())]
    assert m == max(within)


def test_hadamard_on_blocks_and_lengths_of_every_radix_remainder():
  for n in (2, 8, 32, 64, 512):
    h = np.array([[1.0]])
    while h.shape[0] < n:
      h = np.block([[h, h], [h, -h]])
    x = np.random.default_rng(n).normal(size=(3, n)).astype(np.float32)
    np.testing.assert_allclose(np.asarray(encoders.hadamard(jnp.asarray(x))), x @ h.T / np.sqrt(n), atol=1e-5)


def test_rounding_uniforms_are_uniform_and_uncorrelated_across_entries():
  """Every entry's uniform is exactly uniform over keys (module docstring); empirically, neighbouring
  entries and clients are uncorrelated and the 16 bins of each entry are evenly filled."""
  n, d = 20000, 8
  u = np.asarray(jax.jit(jax.vmap(lambda k: encoders.rounding_uniforms(k, d)))(jax.random.split(jax.random.key(5), n)))
  assert u.min() >= 0 and u.max() < 1
  assert np.all(np.abs(u.mean(0) - 0.5) < 5 * np.sqrt(1 / 12 / n))
  counts = np.stack([np.bincount((u[:, i] * 16).astype(int), minlength=16) for i in range(d)])
  chi2 = ((counts - n / 16) ** 2 / (n / 16)).sum(1)
  assert np.all(chi2 < 45)  # 15 degrees of freedom: p < 1e-4 above 45
  c = np.corrcoef(u.T)
  assert np.all(np.abs(c[~np.eye(d, dtype=bool)]) < 5 / np.sqrt(n))


def test_random_signs_are_balanced_and_independent_of_position():
  s = np.asarray(jax.vmap(lambda k: encoders.random_signs(k, 70))(jax.random.split(jax.random.key(3), 4000)))
  assert set(np.unique(s)) == {-1.0, 1.0}
  assert np.all(np.abs(s.mean(0)) < 5 / np.sqrt(4000))


@pytest.mark.parametrize("block", [64, 16])  # one block; several
def test_shared_rotation_is_unbiased_and_linear(block):
  """A round's clients share the rotation: the sum of their rotated uploads rotated back once is
  the sum of their decoded updates, and each is unbiased."""
  enc, x, n = encoders.stochastic_quantizer(2, rotate=True, block=block), _x(), 4000
  shared = enc.shared_rotation
  rotation = jax.random.key(7)
  keys = jax.random.split(jax.random.key(0), n)
  z = jax.jit(jax.vmap(lambda k: shared.roundtrip(x, k, rotation)))(keys)
  each = np.asarray(jax.jit(jax.vmap(lambda v: shared.unrotate(v, rotation, x.shape[0])))(z), np.float64)
  mean, sem = each.mean(0), each.std(0) / np.sqrt(n) + 1e-7
  assert np.all(np.abs(mean - np.asarray(x)) < 5 * sem + 1e-5)
  once = np.asarray(shared.unrotate(jnp.sum(z[:50], 0), rotation, x.shape[0]), np.float64)
  np.testing.assert_allclose(once, each[:50].sum(0), rtol=1e-5, atol=1e-5)
  assert encoders.stochastic_quantizer(2).shared_rotation is None  # nothing to share unrotated
