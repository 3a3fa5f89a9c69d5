"""Secure aggregation, simulated for its effects on the numbers (not its cryptography).

Practical Secure Aggregation for Privacy-Preserving Machine Learning. Keith Bonawitz, Vladimir
Ivanov, Ben Kreuter, Antonio Marcedone, H. Brendan McMahan, Sarvar Patel, Daniel Ramage, Aaron
Segal, Karn Seth. CCS 2017. The server learns only the sum of the clients' inputs, which are
integers modulo ``2**bits``; FLSim and TFF simulate it the same way: fixed-point encode, sum
modulo ``2**bits``, decode.

Each client encodes its (clipped) update as ``v = trunc(x * s) mod 2**bits`` with scale
``s = 2**(bits - 1) / range`` (truncation toward zero never increases ``|x|``, so a clipped
update stays within its norm bound). The engine sums the int32 values; int32 addition wraps
modulo ``2**32``, of which ``2**bits`` is a divisor, so the sum modulo ``2**bits`` is exact.
The server reads the sum as a signed ``bits``-bit integer and divides by ``s``: any
coordinate whose true sum leaves ``[-range, range)`` wraps around (the accuracy cost of a
too-small range or bit width), and the precision is ``1 / s``. Clients that drop out after being
selected are simply not in the sum (the protocol's dropout recovery), so the round aggregates
the clients that finished.
"""

from typing import NamedTuple

import jax
import jax.numpy as jnp

_INT32_LIMIT = 2.0**30  # |x * s| is clamped here before the modular reduction (int32 headroom)


class SecAgg(NamedTuple):
  """Fixed-point modular summation.

  Attributes:
    bits: width of the modular integers, 2..32.
    range: the sum's representable range ``[-range, range)`` per coordinate.
  """

  bits: int
  range: float

  @property
  def scale(self) -> float:
    return 2.0 ** (self.bits - 1) / self.range


def secagg(bits: int, range_: float) -> SecAgg:
  """Checked ``SecAgg(bits, range)``."""
  if int(bits) != bits or not 2 <= bits <= 32:
    raise ValueError(f"secagg bits must be an integer in 2..32, got {bits}")
  if not range_ > 0:
    raise ValueError(f"secagg range must be > 0, got {range_}")
  return SecAgg(int(bits), float(range_))


def encode(sa: SecAgg, tree):
  """A client's update tree -> int32 tree of residues modulo ``2**bits`` (two's complement)."""

  def one(x):
    v = jnp.trunc(jnp.clip(x.astype(jnp.float32) * sa.scale, -_INT32_LIMIT, _INT32_LIMIT)).astype(jnp.int32)
    return v if sa.bits == 32 else v & jnp.int32((1 << sa.bits) - 1)

  return jax.tree.map(one, tree)


def decode(sa: SecAgg, tree):
  """The int32 sum tree -> float32 sum tree (modulo ``2**bits``, read as signed)."""

  def one(v):
    if sa.bits < 32:
      v = v & jnp.int32((1 << sa.bits) - 1)
      half = jnp.int32(1 << (sa.bits - 1))
      v = jnp.where(v >= half, v - half - half, v)  # two halves: 2**31 does not fit an int32
    return v.astype(jnp.float32) / sa.scale

  return jax.tree.map(one, tree)
