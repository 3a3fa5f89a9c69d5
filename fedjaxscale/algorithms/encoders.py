"""Update encoders: what a client uploads instead of its float32 update, as pure functions.

Like optax's ``GradientTransformation``, an encoder is a NamedTuple of pure functions,
``UpdateEncoder(encode, decode, num_bits, name, roundtrip)``:

* ``encode(vector, key) -> payload``: the client's flat float32 update to what it sends;
* ``decode(payload, size) -> vector``: what the server reconstructs;
* ``num_bits(size) -> int``: the payload's exact size in bits for an update of ``size`` numbers,
  known before training from the encoder's settings and the model's shape (so the scheduler can
  time the upload: ``upload_s = num_bits / (up_kbps * 1000)``);
* ``roundtrip(vector, key) -> vector``: ``decode(encode(vector, key), size)`` computed without
  forming the payload (no integer casts, no gathered values): the simulation never needs the payload
  off the device, so this is what runs inside the compiled round. It equals the composition
  exactly (the tests check it bit for bit).

Encoders work on the update flattened to one vector (``jax.flatten_util.ravel_pytree``);
``apply_encoder`` does the flattening and returns the decoded update tree, which is what the
aggregate sums.

Encoders:

* ``identity()``: float32, 32 bits a number.
* ``stochastic_quantizer(bits, rotate, block)``: stochastic uniform quantization to ``2**bits``
  levels between the vector's min and max (two float32 scalars sent alongside), unbiased
  (``E[decode(encode(x))] = x``); with ``rotate=True`` the vector is first multiplied by a random
  Hadamard rotation ``H D / sqrt(n)`` (D a random diagonal of signs), which shrinks the range to
  about ``||x|| sqrt(log n / n)``; vectors longer than ``block`` are rotated block by block
  (padded to a multiple of the block, not to the next power of 2), as practical systems do; the
  block is the largest power of 2 up to ``block`` that does not pad much more than a shorter one
  would (``_rotation_shape``: 610 numbers are 3 blocks of 256, not one of 1,024). The
  rotation's signs come from randomness shared with the server, so they cost no bits. In a
  synchronous round of ``dp.private_aggregation`` every client uses the round's one rotation
  (``SharedRotation``, the paper's public randomness) and the server rotates the sum back once;
  elsewhere (error feedback, asynchronous buffers mixing model versions) each client rotates
  with its own key and decodes its own upload.
  Distributed Mean Estimation with Limited Communication. Ananda Theertha Suresh, Felix X. Yu,
  Sanjiv Kumar, H. Brendan McMahan. ICML 2017. arXiv:1611.00429. (pi_sk and pi_srk.)
* ``top_k(k)``: the k entries of largest magnitude as (float32 value, index) pairs,
  ``k * (32 + ceil(log2 d))`` bits. Biased; ``dp.private_aggregation(..., error_feedback=True)``
  keeps each client's residual in the client-state store and adds it to its next update
  (error feedback), which makes it converge like the uncompressed update.

Cost on XLA:CPU, where these run per client under ``vmap`` inside the round: the random signs
are one ``jax.random.bits`` draw of ``n / 32`` words unpacked by shifts (not a Rademacher draw
of n floats); the rounding's uniforms are a counter-based hash of the client's threefry key (two
words; below) instead of a threefry draw of n words, which measured 10-20x cheaper; the
Hadamard transform is radix-16: ``log16 n`` stages, each a ``[., 16] x [16, 16]`` matmul doing
four butterfly stages at once, instead of ``log2 n`` reshape-and-stack stages; top-k's entries
are found by counting at three thresholds a pass (``_top_k_mask``), not by ``lax.top_k``'s sort.

The rounding uniforms: entry i of a client with threefry key data ``(k0, k1)`` gets
``u_i = fmix32((i * 0x9E3779B9 + k1) xor k0) / 2**32`` (murmur3's 32-bit finalizer over a Weyl
sequence, the SplitMix construction), keeping its 24 top bits. For each i, ``(i * c + k1) xor k0``
is uniform over 32-bit words when the key words are (threefry's are), and fmix32 is a bijection,
so every ``u_i`` is exactly uniform on the 2**24-point grid of [0, 1): each entry is rounded up
with probability equal to its fractional part to float32 resolution, so the quantizer is
unbiased. Entries of one client are not independent of each other, but nothing relies on it:
unbiasedness needs the marginals only, and the quantization error's expected squared norm is the
sum of the entries' variances whatever their correlation (the rotation is orthonormal, so the
same holds after rotating back). Different clients' keys are independent threefry outputs.

Example::

  enc = stochastic_quantizer(4, rotate=True)
  upload_bits = enc.num_bits(num_params)
  decoded_tree, _ = apply_encoder(enc, delta_tree, key)
"""

import math
from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from jax.flatten_util import ravel_pytree

SCALAR_BITS = 32  # a float32 sent alongside the payload (a quantizer's min and max)
ROTATION_BLOCK = 1 << 12  # default largest block of the rotation (vectors are rotated in blocks of at most this)
MIN_BLOCK = 1 << 8  # the smallest block the rotation picks to cut padding (a smaller ``block`` caps it lower)
PADDING_SLACK = 1 / 8  # the largest block is kept while its padded length is within this of the shortest
_RADIX = 16  # the Hadamard transform's stage size: H_16 applied by a matmul


class UpdateEncoder(NamedTuple):
  """An update encoder as pure functions (module docstring).

  Attributes:
    encode: ``(vector float32 [d], key) -> payload`` (a pytree of arrays).
    decode: ``(payload, d) -> vector float32 [d]``.
    num_bits: ``d -> int``, the payload's exact size in bits.
    name: a short label for outputs.
    roundtrip: ``(vector, key) -> vector``, equal to ``decode(encode(vector, key), d)``; None:
      computed as that composition.
  """

  encode: Callable[[jax.Array, jax.Array], Any]
  decode: Callable[[Any, int], jax.Array]
  num_bits: Callable[[int], int]
  name: str
  roundtrip: Callable[[jax.Array, jax.Array], jax.Array] | None = None
  shared_rotation: "SharedRotation | None" = None  # rotated quantizers: see SharedRotation


class SharedRotation(NamedTuple):
  """A rotated encoder's path with one rotation shared by every client of a round.

  Suresh et al.'s rotation comes from public randomness: with the same ``H D`` for all
  clients, the server can sum the clients' decoded uploads while they are still rotated and
  rotate the sum back once (the rotation is linear), instead of once per client.

  Attributes:
    roundtrip: ``(vector float32 [d], key, rotation key) -> [n]``, the client's decoded upload
      in the rotated basis (``n >= d``, zero-padded); ``key`` is the client's rounding key.
    unrotate: ``(sum [n], rotation key, d) -> [d]``, linear: the sum of the clients' decoded
      updates in the original basis.
  """

  roundtrip: Callable[[jax.Array, jax.Array, jax.Array], jax.Array]
  unrotate: Callable[[jax.Array, jax.Array, int], jax.Array]


def identity() -> UpdateEncoder:
  """No compression: the float32 update, 32 bits a number."""
  return UpdateEncoder(lambda x, key: x, lambda payload, d: payload, lambda d: 32 * int(d), "float32", lambda x, key: x)


def ratio(fraction: float) -> UpdateEncoder:
  """The bare size ratio of ``system.compression``: the update is sent exactly, but its size is
  counted as ``fraction`` of float32 (a stand-in for a compressor whose effect on the values
  is not simulated)."""
  if not 0 < fraction <= 1:
    raise ValueError(f"compression ratio must be in (0, 1], got {fraction}")
  return UpdateEncoder(
    lambda x, key: x,
    lambda payload, d: payload,
    lambda d: math.ceil(32 * int(d) * fraction),
    f"ratio{fraction:g}",
    lambda x, key: x,
  )


def _pow2(d: int) -> int:
  return 1 << max(int(d) - 1, 0).bit_length()


def _hadamard_matrix(n: int) -> np.ndarray:
  h = np.ones((1, 1), np.float32)
  while h.shape[0] < n:
    h = np.block([[h, h], [h, -h]])
  return h


def hadamard(x: jax.Array) -> jax.Array:
  """The orthonormal Walsh-Hadamard transform ``H x / sqrt(n)`` along the last axis of ``x``
  (length n a power of 2; leading axes are independent vectors).

  Its own inverse. Radix 16: ``H_n = H_16 (x) ... (x) H_16 (x) H_r`` (Kronecker factors), applied
  as ``ceil(log2 n / 4)`` stages, each contracting the leading factor of the (reshaped) vector with
  a ``[16, 16]`` (or ``[r, r]``) +-1 matrix and moving it to the back, so after the last stage the
  factors are back in order; ``n log16(n) x 16`` multiply-adds, a few matmuls instead of
  ``log2 n`` reshape-and-stack stages (Suresh et al., Section 4, use the radix-2 butterflies).
  """
  n = x.shape[-1]
  if n & (n - 1):
    raise ValueError(f"hadamard needs a power-of-2 length, got {n}")
  lead = x.shape[:-1]
  log_n, log_r = n.bit_length() - 1, _RADIX.bit_length() - 1
  factors = [_RADIX] * (log_n // log_r) + ([1 << (log_n % log_r)] if log_n % log_r else [])
  y = x.reshape(-1, n)
  for f in factors:
    h = jnp.asarray(_hadamard_matrix(f), x.dtype)
    # [B, f, rest] x [f, f] -> [B, rest, f]: the contracted factor becomes the last one.
    y = jnp.einsum("bfr,gf->brg", y.reshape(y.shape[0], f, -1), h).reshape(y.shape[0], n)
  return (y / jnp.sqrt(jnp.asarray(n, x.dtype))).reshape(lead + (n,))


def random_signs(key, n: int) -> jax.Array:
  """n independent +-1 (float32) from one ``jax.random.bits`` draw of ``ceil(n / 32)`` words."""
  words = jax.random.bits(key, ((n + 31) // 32,), jnp.uint32)
  bits = (words[:, None] >> jnp.arange(32, dtype=jnp.uint32)) & jnp.uint32(1)
  return 1.0 - 2.0 * bits.reshape(-1)[:n].astype(jnp.float32)


def _fmix32(h: jax.Array) -> jax.Array:
  """murmur3's 32-bit finalizer: a bijection of uint32 that mixes every input bit into every output bit."""
  h = h ^ (h >> 16)
  h = h * jnp.uint32(0x85EBCA6B)
  h = h ^ (h >> 13)
  h = h * jnp.uint32(0xC2B2AE35)
  return h ^ (h >> 16)


def rounding_uniforms(key, n: int) -> jax.Array:
  """n uniforms in [0, 1) on the 2**24-point grid, hashed from the key's two words (module docstring)."""
  k = jax.random.key_data(key).reshape(-1)
  i = jnp.arange(n, dtype=jnp.uint32)
  h = _fmix32((i * jnp.uint32(0x9E3779B9) + k[1]) ^ k[0])
  return (h >> 8).astype(jnp.float32) * jnp.float32(2.0**-24)


def _rotation_shape(d: int, block: int) -> tuple[int, int]:
  """(blocks, block size m) of the rotation of a d-vector: ``ceil(d / m)`` blocks of m.

  The candidates are the powers of 2 from ``top = min(pow2(d), block)`` down to
  ``min(top, MIN_BLOCK)``; the largest one is taken whose padded length ``ceil(d / m) m`` is within
  ``PADDING_SLACK`` (an eighth) of the shortest. A longer block spreads the update's energy over
  more numbers, so it is kept unless a shorter one saves real padding: the padding is paid in
  upload bits and in rotation work. For d = 610 (logistic regression 60 -> 10) that is 3 blocks of
  256 (768 numbers) instead of one of 1,024; for d = 299,018 it stays 74 blocks of 4,096 (303,104,
  against 299,264 in blocks of 256); a d up to ``MIN_BLOCK`` is one block of ``pow2(d)``.
  """
  d = int(d)
  top = min(_pow2(d), int(block))
  sizes = [top >> i for i in range(top.bit_length()) if top >> i >= min(top, MIN_BLOCK)]
  padded = {m: -(-d // m) * m for m in sizes}
  shortest = min(padded.values())
  m = next(m for m in sizes if padded[m] <= shortest * (1 + PADDING_SLACK))
  return -(-d // m), m


def stochastic_quantizer(bits: int, rotate: bool = False, block: int = ROTATION_BLOCK) -> UpdateEncoder:
  """Stochastic uniform quantization to ``bits`` bits a number (Suresh et al. 2017).

  For ``x`` with ``lo = min x``, ``hi = max x`` and ``L = 2**bits - 1`` intervals, each entry is
  rounded to one of its two neighbouring levels ``lo + (hi - lo) j / L`` with the probabilities
  that make it unbiased. Sent: ``bits`` per entry plus ``lo`` and ``hi`` (2 x 32 bits). With
  ``rotate``, ``x`` is zero-padded to ``n`` numbers and each block of ``m`` is rotated by
  ``H D / sqrt(m)`` before quantizing (``n * bits + 64`` bits), where m is a power of 2 of at most
  ``block`` and ``n = ceil(d / m) m`` (``_rotation_shape``: one block of ``2**ceil(log2 d)`` when
  that is at most ``block`` and pads little; otherwise the largest block that does not pad much
  more than a shorter one); decoding rotates back with ``D H / sqrt(m)``, so the estimate stays
  unbiased.

  ``bits=32`` is the float32 update itself (identity): 2**32 levels are finer than float32.

  Args:
    bits: 1..32.
    rotate: apply the random Hadamard rotation first.
    block: the rotation's largest block (a power of 2).

  Returns:
    An ``UpdateEncoder``.
  """
  if not 1 <= int(bits) <= 32 or int(bits) != bits:
    raise ValueError(f"bits must be an integer in 1..32, got {bits}")
  if int(block) != block or block < 1 or int(block) & (int(block) - 1):
    raise ValueError(f"the rotation block must be a power of 2, got {block}")
  bits, block = int(bits), int(block)
  if bits == 32:
    return identity()
  levels = float(2**bits - 1)

  def rotated(x, sign_key):
    blocks, m = _rotation_shape(x.shape[0], block)
    y = jnp.pad(x, (0, blocks * m - x.shape[0])) * random_signs(sign_key, blocks * m)
    return hadamard(y.reshape(blocks, m)).reshape(-1)

  def unrotated(y, sign_key, d):
    blocks, m = _rotation_shape(d, block)
    return (hadamard(y.reshape(blocks, m)).reshape(-1) * random_signs(sign_key, blocks * m))[:d]

  def to_levels(x, round_key):
    """x -> (level index as float32, lo, span)."""
    lo, hi = jnp.min(x), jnp.max(x)
    span = jnp.where(hi > lo, hi - lo, 0.0)
    scaled = (x - lo) * (levels / jnp.where(hi > lo, span, 1.0))
    floor = jnp.floor(scaled)
    up = rounding_uniforms(round_key, x.shape[0]) < (scaled - floor)
    return jnp.clip(floor + up, 0, levels), lo, span

  def quantize(x, key):
    """(rotated) x -> (level index as float32, lo, span, sign key)."""
    sign_key, round_key = jax.random.split(key)
    if rotate:
      x = rotated(x, sign_key)
    return (*to_levels(x, round_key), sign_key)

  def levels_to_vector(q, lo, span, sign_key, d):
    x = lo + q * (span / levels)
    return unrotated(x, sign_key, d) if rotate else x

  def encode(x, key):
    q, lo, span, sign_key = quantize(x, key)
    # The level index fits in ``bits`` bits; uint32 carries it (``num_bits`` is the real size).
    return {"q": q.astype(jnp.uint32), "lo": lo, "span": span, "key": jax.random.key_data(sign_key)}

  def decode(payload, d):
    sign_key = jax.random.wrap_key_data(payload["key"])
    return levels_to_vector(payload["q"].astype(jnp.float32), payload["lo"], payload["span"], sign_key, d)

  def roundtrip(x, key):
    return levels_to_vector(*quantize(x, key), x.shape[0])

  def num_bits(d):
    blocks, m = _rotation_shape(d, block) if rotate else (1, int(d))
    return blocks * m * bits + 2 * SCALAR_BITS

  def shared_roundtrip(x, round_key, sign_key):
    q, lo, span = to_levels(rotated(x, sign_key), round_key)
    return lo + q * (span / levels)

  name = f"{'rotated_' if rotate else ''}q{bits}"
  shared = SharedRotation(shared_roundtrip, unrotated) if rotate else None
  return UpdateEncoder(encode, decode, num_bits, name, roundtrip, shared)


_INF_BITS = 0x7F800000  # float32 infinity's bit pattern


def _counts_at_or_above(keys: jax.Array, thresholds: list, width: int) -> list:
  """``count(keys >= t)`` for each threshold t, each count known to be below ``2**width``.

  ``31 // width`` counts share one int32 sum, each in a field of ``width`` bits, so three
  thresholds over a vector of up to 1,023 numbers cost one reduction (XLA:CPU takes about as long
  for it as for a single count).
  """
  per_sum = max(1, 31 // width)
  counts = []
  for start in range(0, len(thresholds), per_sum):
    group = thresholds[start : start + per_sum]
    packed = sum(jnp.where(keys >= t, jnp.int32(1 << (width * j)), jnp.int32(0)) for j, t in enumerate(group))
    total = jnp.sum(packed, dtype=jnp.int32)
    counts += [(total >> (width * j)) & ((1 << width) - 1) for j in range(len(group))]
  return counts


def _narrow(keys, need, bracket, width: int, settled=None, probe_one: bool = False):
  """Narrows ``bracket = (lo, hi, n_lo, n_hi)`` around the largest threshold t with
  ``count(keys >= t) >= need``.

  Requires ``count(keys >= lo) >= need > count(keys >= hi) = n_hi``; ``n_lo`` is
  ``count(keys >= lo)`` or any other value than ``need``. Each pass counts at ``31 // width`` (at
  most 3) evenly spaced thresholds in one reduction (``_counts_at_or_above``) and keeps the part
  of the interval where the count crosses ``need``, so a pass divides it by 4 when the counts fit
  10 bits (d < 1,024) and by 2 otherwise. It stops once ``count(keys >= lo) == need`` (``lo``
  then separates the ``need`` largest keys from the rest), once ``hi == lo + 1`` (``lo`` is the
  threshold), or once ``settled(bracket)``. Under ``vmap`` the passes run until the last row stops.
  With ``probe_one``, a pass from ``lo == 0`` counts at 1 first: a sparse vector with fewer than
  ``need`` non-zero magnitudes is then settled in one pass instead of a bisection down to 1.
  """
  parts = max(1, min(3, 31 // width)) + 1

  def unfinished(bracket):
    lo, hi, n_lo, _ = bracket
    going = (hi - lo > 1) & (n_lo != need)
    return going if settled is None else going & ~settled(*bracket)

  def narrow(bracket):
    lo, hi, n_lo, n_hi = bracket
    span = hi - lo
    step, rest = span // parts, span % parts
    thresholds = [lo + j * step + (j * rest) // parts for j in range(1, parts)]  # ascending
    if probe_one:
      thresholds[0] = jnp.where(lo == 0, 1, thresholds[0])  # hi - lo >= 2: the others are >= 1
    counts = _counts_at_or_above(keys, thresholds, width)  # descending
    for t, n in zip(thresholds, counts):
      lo, n_lo = jnp.where(n >= need, t, lo), jnp.where(n >= need, n, n_lo)
    for t, n in zip(reversed(thresholds), reversed(counts)):
      hi, n_hi = jnp.where(n < need, t, hi), jnp.where(n < need, n, n_hi)
    return lo, hi, n_lo, n_hi

  return jax.lax.while_loop(unfinished, narrow, bracket)


def _top_k_mask(x: jax.Array, k: int) -> jax.Array:
  """Exactly k True at the entries of largest magnitude, ties broken towards the lowest indices
  (``lax.top_k``'s choice), found by counting instead of sorting. NaN ranks with infinity.

  For ``|x| >= 0`` the int32 bit pattern orders as the value does, so the k-th largest magnitude
  is the largest bit pattern t with ``count(bits >= t) >= k``:

  1. A bracket for one pass over the vector: split it into k strided columns; the smallest column
     maximum has at least k entries (the maxima) at or above it, and none is above the largest.
  2. ``_narrow`` divides the bracket by 4 a pass. It stops once exactly k entries are at or above
     its lower end (which then separates the k largest from the rest), or once the bracket pins
     the k-th largest down, or once either end is one entry away: k - 1 entries at or above the
     upper end (the k-th largest is then the largest entry below it) or k + 1 at or above the lower
     end (the smallest of them is the (k+1)-th). Those last two are one reduction each, whatever
     the gap between the k-th and (k+1)-th magnitudes, which is what keeps a bisection going.
  3. The entries above the k-th largest are kept and, of those equal to it, the lowest-indexed
     ones, found by ``_narrow`` over the ties' reversed indices (no pass runs without a tie).

  On XLA:CPU, 1,000 logistic-regression updates of 610 numbers, k = 61, under ``vmap``: 5-7
  passes of about 0.1 ms for the slowest client, 1.0 ms in all, where the earlier bit-by-bit
  search needed up to 24 passes (2.8 ms) and ``lax.top_k`` takes 10.7 ms (``benchmarks/README.md``). The maxima and minima are
  taken over float32 magnitudes: XLA:CPU's int32 max reduction is several times slower.
  """
  d = x.shape[0]
  if k >= d:
    return jnp.ones((d,), bool)
  width = d.bit_length()  # every count fits
  # NaN (bits above infinity's) ranks with infinity; the float32 view is read where XLA:CPU's
  # float reductions are faster than its integer ones.
  bits = jnp.minimum(jax.lax.bitcast_convert_type(jnp.abs(x), jnp.int32), _INF_BITS)
  magnitude = jax.lax.bitcast_convert_type(bits, jnp.float32)

  def as_bits(value):
    return jax.lax.bitcast_convert_type(value, jnp.int32)

  rows = -(-d // k)
  columns = jnp.pad(magnitude, (0, rows * k - d), constant_values=-1.0).reshape(rows, k)  # -1: below every entry
  while columns.shape[0] > 1:  # elementwise maxima of halves: XLA:CPU's max over axis 0 is 3x slower
    half = columns.shape[0] // 2
    top = jnp.maximum(columns[:half], columns[half : 2 * half])
    columns = jnp.concatenate([top, columns[2 * half :]]) if columns.shape[0] % 2 else top
  column_max = columns[0]  # k entries, one per column
  bracket = (as_bits(jnp.min(column_max)), as_bits(jnp.max(column_max)) + 1, jnp.int32(d + 1), jnp.int32(0))
  lo, hi, n_lo, n_hi = _narrow(
    bits, k, bracket, width, lambda lo, hi, n_lo, n_hi: (n_hi == k - 1) | (n_lo == k + 1), probe_one=True
  )
  open_ = (hi - lo > 1) & (n_lo != k)
  next_below = as_bits(jnp.max(jnp.where(bits < hi, magnitude, -1.0)))  # the (n_hi + 1)-th largest
  smallest = as_bits(jnp.min(jnp.where(bits >= lo, magnitude, jnp.inf)))  # the n_lo-th largest
  lo = jnp.where(open_ & (n_hi == k - 1), next_below, jnp.where(open_ & (n_lo == k + 1), smallest, lo))
  # lo is now the k-th largest, or (stopped at exactly k) below it with no entry equal to it, or
  # (one too many) the (k+1)-th largest: then need is 0 unless it ties with the k-th.
  above, tie = bits > lo, bits == lo
  n_above, n_at = _counts_at_or_above(jnp.where(above, 2, tie.astype(jnp.int32)), [2, 1], width)
  need = k - n_above
  ties = jnp.where(need > 0, n_at - n_above, 0)  # stops the tie search at once when none is needed
  keys = jnp.where(tie, jnp.arange(d - 1, -1, -1, dtype=jnp.int32), -1)  # the lowest index, the largest key
  last, _, _, _ = _narrow(keys, need, (jnp.int32(0), jnp.int32(d), ties, jnp.int32(0)), width)
  return above | ((keys >= last) & (need > 0))


def top_k(k: int) -> UpdateEncoder:
  """Top-k sparsification: the ``k`` largest-magnitude entries, as float32 values and indices.

  Args:
    k: entries kept (1 <= k <= the update's size; ``num_bits`` checks the upper bound).

  Returns:
    An ``UpdateEncoder`` with ``num_bits(d) = k * (32 + ceil(log2 d))``.
  """
  if int(k) != k or k < 1:
    raise ValueError(f"k must be an integer >= 1, got {k}")
  k = int(k)

  def encode(x, key):
    del key
    (index,) = jnp.nonzero(_top_k_mask(x, k), size=k)
    return {"values": x[index], "index": index.astype(jnp.int32)}

  def decode(payload, d):
    return jnp.zeros((d,), jnp.float32).at[payload["index"]].set(payload["values"])

  def roundtrip(x, key):
    del key
    return jnp.where(_top_k_mask(x, k), x, 0.0)

  def num_bits(d):
    if k > d:
      raise ValueError(f"top-k keeps k={k} entries but the update has only {d}")
    return k * (32 + max(math.ceil(math.log2(d)), 1))

  return UpdateEncoder(encode, decode, num_bits, f"top{k}", roundtrip)


def apply_encoder(encoder: UpdateEncoder, update, key, scale_to_norm: jax.Array | None = None):
  """Encodes and decodes ``update`` (a pytree), returning the tree the server reconstructs.

  Args:
    encoder: the encoder.
    update: the client's update tree.
    key: the client's key for the encoder's randomness.
    scale_to_norm: optional L2 bound: the decoded vector is scaled down to it if it exceeds it.
      Every encoder here decodes linearly in its transmitted scalars (``lo``/``span``, the values),
      so the client can send the scaled payload at no extra bits; DP uses this to keep a
      quantized update within the clipping norm.

  Returns:
    ``(decoded tree, decoded L2 norm before any scaling)``; the norm is None without
    ``scale_to_norm`` (not computed).
  """
  flat, unravel = ravel_pytree(update)
  flat = flat.astype(jnp.float32)
  if encoder.roundtrip is not None:
    decoded = encoder.roundtrip(flat, key)
  else:
    decoded = encoder.decode(encoder.encode(flat, key), flat.shape[0])
  norm = None
  if scale_to_norm is not None:
    norm = jnp.linalg.norm(decoded)
    decoded = decoded * jnp.minimum(1.0, scale_to_norm / jnp.maximum(norm, 1e-30))
  return unravel(decoded), norm


def from_config(kind: str, bits: int = 32, rotate: bool = False, k: int = 0, block: int = ROTATION_BLOCK):
  """The encoder a config names: ``'none'``, ``'quantize'`` (``bits``, ``rotate``, ``block``) or ``'topk'`` (``k``)."""
  if kind == "none":
    return identity()
  if kind == "quantize":
    return stochastic_quantizer(bits, rotate, block)
  if kind == "topk":
    return top_k(k)
  raise ValueError(f"unknown encoder {kind!r}; expected 'none', 'quantize' or 'topk'")
