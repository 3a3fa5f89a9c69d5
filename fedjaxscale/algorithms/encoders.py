"""Update encoders: what a client uploads instead of its float32 update, as pure functions.

Like optax's ``GradientTransformation``, an encoder is a NamedTuple of pure functions,
``UpdateEncoder(encode, decode, num_bits)``:

* ``encode(vector, key) -> payload``: the client's flat float32 update to what it sends;
* ``decode(payload, size) -> vector``: what the server reconstructs;
* ``num_bits(size) -> int``: the payload's exact size in bits for an update of ``size`` numbers,
  known before training from the encoder's settings and the model's shape (so the scheduler can
  time the upload: ``upload_s = num_bits / (up_kbps * 1000)``).

Encoders work on the update flattened to one vector (``jax.flatten_util.ravel_pytree``);
``apply_encoder`` does the flattening and returns the decoded update tree, which is what the
aggregate sums (the simulation never needs the payload itself off the device).

Encoders:

* ``identity()``: float32, 32 bits a number.
* ``stochastic_quantizer(bits, rotate)``: stochastic uniform quantization to ``2**bits`` levels
  between the vector's min and max (two float32 scalars sent alongside), unbiased
  (``E[decode(encode(x))] = x``); with ``rotate=True`` the vector is first multiplied by a random
  Hadamard rotation ``H D / sqrt(d)`` (D a random diagonal of signs, d the size padded to a power
  of 2), which shrinks the range to about ``||x|| sqrt(log d / d)``. The rotation's signs come
  from randomness shared with the server (the round's key), so they cost no bits.
  Distributed Mean Estimation with Limited Communication. Ananda Theertha Suresh, Felix X. Yu,
  Sanjiv Kumar, H. Brendan McMahan. ICML 2017. arXiv:1611.00429. (pi_sk and pi_srk.)
* ``top_k(k)``: the k entries of largest magnitude as (float32 value, index) pairs,
  ``k * (32 + ceil(log2 d))`` bits. Biased; error feedback (which would make it converge like
  the uncompressed update) needs per-client state across rounds, which this simulator does not
  yet store: ``top_k(k, error_feedback=True)`` raises.

Example::

  enc = stochastic_quantizer(4, rotate=True)
  upload_bits = enc.num_bits(num_params)
  decoded_tree = apply_encoder(enc, delta_tree, key)
"""

import math
from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
from jax.flatten_util import ravel_pytree

SCALAR_BITS = 32  # a float32 sent alongside the payload (a quantizer's min and max)


class UpdateEncoder(NamedTuple):
  """An update encoder as pure functions (module docstring).

  Attributes:
    encode: ``(vector float32 [d], key) -> payload`` (a pytree of arrays).
    decode: ``(payload, d) -> vector float32 [d]``.
    num_bits: ``d -> int``, the payload's exact size in bits.
    name: a short label for outputs.
  """

  encode: Callable[[jax.Array, jax.Array], Any]
  decode: Callable[[Any, int], jax.Array]
  num_bits: Callable[[int], int]
  name: str


def identity() -> UpdateEncoder:
  """No compression: the float32 update, 32 bits a number."""
  return UpdateEncoder(lambda x, key: x, lambda payload, d: payload, lambda d: 32 * int(d), "float32")


def ratio(fraction: float) -> UpdateEncoder:
  """The bare size ratio of ``system.compression``: the update is sent exactly, but its size is
  counted as ``fraction`` of float32 (a stand-in for a compressor whose effect on the values
  is not simulated)."""
  if not 0 < fraction <= 1:
    raise ValueError(f"compression ratio must be in (0, 1], got {fraction}")
  return UpdateEncoder(
    lambda x, key: x, lambda payload, d: payload, lambda d: math.ceil(32 * int(d) * fraction), f"ratio{fraction:g}"
  )


def _pow2(d: int) -> int:
  return 1 << max(int(d) - 1, 0).bit_length()


def hadamard(x: jax.Array) -> jax.Array:
  """The orthonormal Walsh-Hadamard transform ``H x / sqrt(d)`` of ``x`` (length a power of 2).

  Its own inverse. O(d log d) butterflies, as in Suresh et al. (Section 4).
  """
  d = x.shape[0]
  if d & (d - 1):
    raise ValueError(f"hadamard needs a power-of-2 length, got {d}")
  h = 1
  while h < d:
    y = x.reshape(-1, 2, h)
    x = jnp.stack([y[:, 0] + y[:, 1], y[:, 0] - y[:, 1]], axis=1).reshape(d)
    h *= 2
  return x / jnp.sqrt(jnp.asarray(d, x.dtype))


def _signs(key, d):
  return jax.random.rademacher(key, (d,), jnp.float32)


def stochastic_quantizer(bits: int, rotate: bool = False) -> UpdateEncoder:
  """Stochastic uniform quantization to ``bits`` bits a number (Suresh et al. 2017).

  For ``x`` with ``lo = min x``, ``hi = max x`` and ``L = 2**bits - 1`` intervals, each entry is
  rounded to one of its two neighbouring levels ``lo + (hi - lo) j / L`` with the probabilities
  that make it unbiased. Sent: ``bits`` per entry plus ``lo`` and ``hi`` (2 x 32 bits). With
  ``rotate``, ``x`` is zero-padded to ``d' = 2**ceil(log2 d)`` and rotated by ``H D / sqrt(d')``
  before quantizing (``d' * bits + 64`` bits); decoding rotates back with ``D H / sqrt(d')``, so
  the estimate stays unbiased.

  ``bits=32`` is the float32 update itself (identity): 2**32 levels are finer than float32.

  Args:
    bits: 1..32.
    rotate: apply the random Hadamard rotation first.

  Returns:
    An ``UpdateEncoder``.
  """
  if not 1 <= int(bits) <= 32 or int(bits) != bits:
    raise ValueError(f"bits must be an integer in 1..32, got {bits}")
  bits = int(bits)
  if bits == 32:
    return identity()
  levels = float(2**bits - 1)

  def encode(x, key):
    d = x.shape[0]
    rot_key, round_key = jax.random.split(key)
    if rotate:
      x = hadamard(jnp.pad(x, (0, _pow2(d) - d)) * _signs(rot_key, _pow2(d)))
    lo, hi = jnp.min(x), jnp.max(x)
    span = jnp.where(hi > lo, hi - lo, 1.0)
    scaled = (x - lo) / span * levels
    floor = jnp.floor(scaled)
    up = jax.random.uniform(round_key, x.shape) < (scaled - floor)
    q = jnp.clip(floor + up, 0, levels)
    # The level index fits in ``bits`` bits; uint32 carries it (the count below is the real size).
    return {"q": q.astype(jnp.uint32), "lo": lo, "span": jnp.where(hi > lo, hi - lo, 0.0), "key": rot_key}

  def decode(payload, d):
    x = payload["lo"] + payload["q"].astype(jnp.float32) * (payload["span"] / levels)
    if rotate:
      x = (hadamard(x) * _signs(payload["key"], x.shape[0]))[:d]
    return x

  def num_bits(d):
    n = _pow2(d) if rotate else int(d)
    return n * bits + 2 * SCALAR_BITS

  name = f"{'rotated_' if rotate else ''}q{bits}"
  return UpdateEncoder(encode, decode, num_bits, name)


def top_k(k: int, error_feedback: bool = False) -> UpdateEncoder:
  """Top-k sparsification: the ``k`` largest-magnitude entries, as float32 values and indices.

  Args:
    k: entries kept (1 <= k <= the update's size; ``num_bits`` checks the upper bound).
    error_feedback: not available (needs per-client state across rounds); raises.

  Returns:
    An ``UpdateEncoder`` with ``num_bits(d) = k * (32 + ceil(log2 d))``.
  """
  if error_feedback:
    raise ValueError(
      "top-k error feedback needs a per-client state store across rounds, which fedjaxscale does not have yet"
    )
  if int(k) != k or k < 1:
    raise ValueError(f"k must be an integer >= 1, got {k}")
  k = int(k)

  def encode(x, key):
    del key
    _, idx = jax.lax.top_k(jnp.abs(x), k)
    return {"values": x[idx], "index": idx.astype(jnp.int32)}

  def decode(payload, d):
    return jnp.zeros((d,), jnp.float32).at[payload["index"]].set(payload["values"])

  def num_bits(d):
    if k > d:
      raise ValueError(f"top-k keeps k={k} entries but the update has only {d}")
    return k * (32 + max(math.ceil(math.log2(d)), 1))

  return UpdateEncoder(encode, decode, num_bits, f"top{k}")


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
    ``(decoded tree, decoded L2 norm before any scaling)``.
  """
  flat, unravel = ravel_pytree(update)
  flat = flat.astype(jnp.float32)
  decoded = encoder.decode(encoder.encode(flat, key), flat.shape[0])
  norm = jnp.linalg.norm(decoded)
  if scale_to_norm is not None:
    decoded = decoded * jnp.minimum(1.0, scale_to_norm / jnp.maximum(norm, 1e-30))
  return unravel(decoded), norm


def from_config(kind: str, bits: int = 32, rotate: bool = False, k: int = 0, error_feedback: bool = False):
  """The encoder a config names: ``'none'``, ``'quantize'`` (``bits``, ``rotate``) or ``'topk'`` (``k``)."""
  if kind == "none":
    return identity()
  if kind == "quantize":
    return stochastic_quantizer(bits, rotate)
  if kind == "topk":
    return top_k(k, error_feedback)
  raise ValueError(f"unknown encoder {kind!r}; expected 'none', 'quantize' or 'topk'")
