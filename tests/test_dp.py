"""DP-FedAvg's clipping, noise and fixed denominator against a NumPy reference; the wrapper
composes with every algorithm; adaptive clipping moves the norm the way Andrew et al. say."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from fedjaxscale import algorithms, models
from fedjaxscale.algorithms import dp
from fedjaxscale.data import make_cohort
from tests import reference
from tests.test_algorithms import ALGORITHMS, BATCH, CLASSES, CLIENT_LR, FEATURES, tiny_clients

CLIP, Z, EXPECTED, SEED = 0.05, 0.7, 4.0, 3


def _noise(round_, shapes):
  """The noise the server draws: leaves in tree order (bias, kernel), keys as dp.py documents."""
  round_key = jax.random.fold_in(jax.random.key(SEED), round_)
  update_key, _ = jax.random.split(round_key)
  keys = jax.random.split(update_key, len(shapes))
  return [np.asarray(jax.random.normal(k, s), np.float64) for k, s in zip(keys, shapes)]


@pytest.mark.parametrize("name", ["fedavg", "fedprox", "fedyogi"])
def test_clip_noise_fixed_denominator_match_numpy(name):
  factory, (rule, server_lr), _, mu = ALGORITHMS[name]
  model = models.logistic_regression(FEATURES, CLASSES)
  alg = dp.private_aggregation(factory(model), clip_norm=CLIP, noise_multiplier=Z, expected_clients=EXPECTED, seed=SEED)
  clients = tiny_clients()
  cohort = make_cohort(clients, BATCH, local_epochs=1, shuffle=False)
  state = alg.init(model.init(jax.random.key(0)))
  w = np.asarray(state.params["Dense_0"]["kernel"], np.float64)
  b = np.asarray(state.params["Dense_0"]["bias"], np.float64)
  server = reference.ServerRule(rule, server_lr)
  for r in range(2):
    state, diag = alg.apply(state, cohort, jax.random.key(r))
    sum_w, sum_b, clipped = np.zeros_like(w), np.zeros_like(b), []
    for c in clients:
      dw, db = reference.client_update(w, b, c["x"].astype(np.float64), c["y"], CLIENT_LR, BATCH, mu, local_epochs=1)
      norm = np.sqrt(np.sum(dw**2) + np.sum(db**2))
      f = min(1.0, CLIP / norm)
      clipped.append(norm > CLIP)
      sum_w, sum_b = sum_w + f * dw, sum_b + f * db  # uniform weights: each client adds at most C
    nb, nw = _noise(r, [b.shape, w.shape])
    delta = [(sum_w + Z * CLIP * nw) / EXPECTED, (sum_b + Z * CLIP * nb) / EXPECTED]
    w, b = server.step([w, b], delta)
    np.testing.assert_allclose(np.asarray(state.params["Dense_0"]["kernel"]), w, rtol=1e-4, atol=1e-6)
    np.testing.assert_allclose(np.asarray(state.params["Dense_0"]["bias"]), b, rtol=1e-4, atol=1e-6)
    assert diag["clipped_fraction"] == pytest.approx(np.mean(clipped))
    assert diag["noise_std"] == pytest.approx(Z * CLIP / EXPECTED)
  assert int(state.round) == 2


def test_clipped_norm_never_exceeds_clip():
  model = models.logistic_regression(FEATURES, CLASSES)
  rng = np.random.default_rng(0)
  for scale in (1e-4, 1.0, 1e4):
    tree = {"a": rng.normal(size=(7, 3)).astype(np.float32) * scale, "b": rng.normal(size=5).astype(np.float32)}
    for clip in (1e-3, 0.5, 3.0):
      out, norm = dp.clip_tree(tree, clip)
      got = np.sqrt(sum(np.sum(np.asarray(x, np.float64) ** 2) for x in jax.tree.leaves(out)))
      assert got <= clip * (1 + 1e-6)
      assert float(norm) == pytest.approx(np.sqrt(sum(np.sum(np.asarray(x, np.float64) ** 2) for x in tree.values())))
  # In a round, with a big learning rate every client's reported pre-clip norm is above C and is clipped.
  alg = dp.private_aggregation(
    algorithms.fedavg(model, optax.sgd(5.0)), clip_norm=1e-3, noise_multiplier=0.0, expected_clients=3
  )
  state = alg.init(model.init(jax.random.key(0)))
  new, diag = alg.apply(state, make_cohort(tiny_clients(), BATCH, local_epochs=1, shuffle=False), jax.random.key(0))
  assert diag["clipped_fraction"] == 1.0 and np.all(diag["client_update_norm"] > 1e-3)
  moved = np.sqrt(
    sum(np.sum((np.asarray(a) - np.asarray(c)) ** 2) for a, c in zip(*map(jax.tree.leaves, (new.params, state.params))))
  )
  assert moved <= 3 * 1e-3 / 3 * (1 + 1e-5)  # the mean of three clipped updates


def test_noise_is_reproducible_and_depends_on_round():
  model = models.logistic_regression(FEATURES, CLASSES)
  cohort = make_cohort(tiny_clients(), BATCH, local_epochs=1, shuffle=False)
  outs = []
  for _ in range(2):
    alg = dp.private_aggregation(
      algorithms.fedavg(model, optax.sgd(0.1)), clip_norm=0.1, noise_multiplier=1.0, expected_clients=3, seed=1
    )
    state = alg.init(model.init(jax.random.key(0)))
    s1, _ = alg.apply(state, cohort, jax.random.key(0))
    s2, _ = alg.apply(s1, cohort, jax.random.key(0))
    outs.append((np.asarray(s1.params["Dense_0"]["kernel"]), np.asarray(s2.params["Dense_0"]["kernel"])))
  np.testing.assert_array_equal(outs[0][0], outs[1][0])
  np.testing.assert_array_equal(outs[0][1], outs[1][1])


def test_adaptive_clipping_moves_towards_quantile():
  """All clients clipped (b = 0) -> C grows by exp(eta * gamma); none clipped -> shrinks by exp(-eta (1 - gamma))."""
  model = models.logistic_regression(FEATURES, CLASSES)
  cohort = make_cohort(tiny_clients(), BATCH, local_epochs=1, shuffle=False)
  ad = dp.AdaptiveClipping(target_quantile=0.5, learning_rate=0.2, count_noise=0.0)
  for clip, factor in ((1e-6, np.exp(0.2 * 0.5)), (1e3, np.exp(-0.2 * 0.5))):
    alg = dp.private_aggregation(
      algorithms.fedavg(model, optax.sgd(0.1)), clip_norm=clip, expected_clients=3, adaptive=ad
    )
    state, diag = alg.apply(alg.init(model.init(jax.random.key(0))), cohort, jax.random.key(0))
    assert float(state.opt_state.clip) == pytest.approx(clip * factor, rel=1e-5)
    assert diag["clip_norm"] == pytest.approx(clip)
  # Andrew et al.'s split of the budget: z_Delta from z and sigma_b.
  assert dp.update_noise_multiplier(1.0, dp.AdaptiveClipping(count_noise=5.0)) == pytest.approx((1 - 0.01) ** -0.5)
  with pytest.raises(ValueError, match="count_noise"):
    dp.update_noise_multiplier(1.0, dp.AdaptiveClipping(count_noise=0.4))


def test_bad_arguments():
  model = models.logistic_regression(FEATURES, CLASSES)
  alg = algorithms.fedavg(model, optax.sgd(0.1))
  with pytest.raises(ValueError, match="clip_norm"):
    dp.private_aggregation(alg, clip_norm=0.0, expected_clients=1)
  with pytest.raises(ValueError, match="noise_multiplier"):
    dp.private_aggregation(alg, clip_norm=1.0, noise_multiplier=-1.0, expected_clients=1)
  with pytest.raises(ValueError, match="expected_clients"):
    dp.private_aggregation(alg, clip_norm=1.0)
  with pytest.raises(ValueError, match="clip_norm"):
    dp.private_aggregation(alg, noise_multiplier=1.0)


def test_second_round_does_not_recompile():
  model = models.logistic_regression(FEATURES, CLASSES)
  alg = dp.private_aggregation(
    algorithms.fedavg(model, optax.sgd(0.1)),
    clip_norm=0.1,
    noise_multiplier=1.0,
    expected_clients=3,
    adaptive=dp.AdaptiveClipping(count_noise=2.0),
  )
  cohort = make_cohort(tiny_clients(), BATCH, local_epochs=1, shuffle=False)
  state = alg.init(model.init(jax.random.key(0)))
  for r in range(2):  # (the server update compiles twice, as the wrapped algorithm's does: placement)
    state, _ = alg.apply(state, cohort, jax.random.key(r))
  compiles, cache = alg.engine.stats.compiles, alg.server_update._cache_size()
  state, _ = alg.apply(state, cohort, jax.random.key(2))
  assert alg.engine.stats.compiles == compiles and alg.server_update._cache_size() == cache


@pytest.mark.parametrize("clip", [None, CLIP])
def test_shared_rotation_round_matches_its_reference(clip):
  """A synchronous round of a rotated quantizer: every client rotates with the round's key,
  quantizes, (is scaled to C,) and the server rotates the cohort's sum back once."""
  from jax.flatten_util import ravel_pytree

  from fedjaxscale.algorithms import encoders
  from fedjaxscale.engine.program import client_key

  model = models.logistic_regression(FEATURES, CLASSES)
  enc = encoders.stochastic_quantizer(3, rotate=True, block=16)
  kw = dict(clip_norm=clip, noise_multiplier=0.0, expected_clients=EXPECTED) if clip else {}
  alg = dp.private_aggregation(algorithms.fedavg(model, optax.sgd(CLIENT_LR)), encoder=enc, seed=SEED, **kw)
  clients = tiny_clients()
  cohort = make_cohort(clients, BATCH, local_epochs=1, shuffle=False)
  state = alg.init(model.init(jax.random.key(0)))
  w = np.asarray(state.params["Dense_0"]["kernel"], np.float64)
  b = np.asarray(state.params["Dense_0"]["bias"], np.float64)
  rng = jax.random.key(5)
  new, _ = alg.apply(state, cohort, rng)
  rotation = jax.random.fold_in(jax.random.fold_in(jax.random.key(SEED), 0), 1)
  total, weights = 0.0, 0.0
  for k, c in enumerate(clients):
    dw, db = reference.client_update(w, b, c["x"].astype(np.float64), c["y"], CLIENT_LR, BATCH, 0.0, local_epochs=1)
    flat = ravel_pytree({"Dense_0": {"bias": db, "kernel": dw}})[0].astype(np.float32)
    if clip:
      flat = flat * min(1.0, clip / float(np.linalg.norm(flat)))
    z = np.asarray(enc.shared_rotation.roundtrip(flat, jax.random.fold_in(client_key(rng, k), 1), rotation), np.float64)
    if clip:
      z = z * min(1.0, clip / np.linalg.norm(z))
    weight = 1.0 if clip else len(c["y"])
    total, weights = total + weight * z, weights + weight
  mean = np.asarray(enc.shared_rotation.unrotate(jnp.asarray(total, jnp.float32), rotation, w.size + b.size))
  mean = mean / (EXPECTED if clip else weights)
  expected = ravel_pytree(state.params)[0] - mean  # FedAvg's server: SGD with learning rate 1
  np.testing.assert_allclose(np.asarray(ravel_pytree(new.params)[0]), expected, rtol=1e-4, atol=1e-5)
