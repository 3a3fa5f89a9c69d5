"""Saving and restoring a NumPy `Generator` exactly, as plain arrays."""

from __future__ import annotations

import numpy as np

_MASK64 = (1 << 64) - 1


def _split(x: int) -> np.ndarray:
  return np.array([x >> 64, x & _MASK64], np.uint64)


def _join(a) -> int:
  hi, lo = (int(v) for v in np.asarray(a, np.uint64))
  return (hi << 64) | lo


def make_rng(seed: int) -> np.random.Generator:
  """The scheduler's generator: PCG64 seeded with ``seed``."""
  return np.random.Generator(np.random.PCG64(seed))


def rng_state_dict(rng: np.random.Generator) -> dict:
  """The generator's exact state as arrays and ints (128-bit words split into
  two uint64), fit for a checkpoint."""
  s = rng.bit_generator.state
  if s["bit_generator"] != "PCG64":
    raise ValueError(f"only PCG64 is supported, got {s['bit_generator']}")
  return {
    "bit_generator": "PCG64",
    "state": _split(s["state"]["state"]),
    "inc": _split(s["state"]["inc"]),
    "has_uint32": int(s["has_uint32"]),
    "uinteger": int(s["uinteger"]),
  }


def rng_from_state_dict(d: dict) -> np.random.Generator:
  """Inverse of `rng_state_dict`."""
  bg = np.random.PCG64()
  bg.state = {
    "bit_generator": "PCG64",
    "state": {"state": _join(d["state"]), "inc": _join(d["inc"])},
    "has_uint32": int(d["has_uint32"]),
    "uinteger": int(d["uinteger"]),
  }
  return np.random.Generator(bg)
