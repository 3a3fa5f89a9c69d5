"""Shape buckets: a small fixed set of sizes so a run compiles a handful of programs.

A size ``n`` is rounded up to the grid of numbers with four significant bits (1..16 exactly, then
18, 20, ..., 32, 36, 40, ..., 64, 72, ...), so padding never adds more than one eighth, and the
grid holds 8 sizes per doubling: over a run, cohorts of similar size land on the same shape.
"""

import math

import numpy as np

_SIGNIFICANT_BITS = 4


def bucket_size(n: int, multiple: int = 1) -> int:
  """The smallest grid size >= n that is a multiple of ``multiple`` (e.g. the device count)."""
  if n < 0:
    raise ValueError(f"bucket_size needs n >= 0, got {n}")
  if multiple < 1:
    raise ValueError(f"bucket_size needs multiple >= 1, got {multiple}")
  units = max(1, math.ceil(n / multiple))
  if units > 2**_SIGNIFICANT_BITS:
    step = 2 ** (units.bit_length() - _SIGNIFICANT_BITS)
    units = math.ceil(units / step) * step
  return units * multiple


def bucket_sizes(n: np.ndarray, multiple: int = 1) -> np.ndarray:
  """Vectorised ``bucket_size`` over an integer array."""
  n = np.asarray(n, dtype=np.int64)
  units = np.maximum(1, -(-n // multiple))
  bits = np.floor(np.log2(np.maximum(units, 1))).astype(np.int64) + 1
  step = np.where(bits > _SIGNIFICANT_BITS, 2 ** np.maximum(bits - _SIGNIFICANT_BITS, 0), 1)
  return (-(-units // step) * step) * multiple


def coarse_bucket_size(n: int) -> int:
  """The smallest of 1, 2, 3, 4, 6, 8, 12, 16, 24, ... (two sizes per doubling) that is >= n.

  For lengths that vary a lot from round to round (the lanes of a packed cohort), where a coarse
  grid means fewer compiled shapes and packing absorbs most of the extra room.
  """
  if n <= 2:
    return max(1, int(n))
  k = (int(n) - 1).bit_length() - 1  # 2**k < n <= 2**(k+1)
  return 3 * 2 ** (k - 1) if n <= 3 * 2 ** (k - 1) else 2 ** (k + 1)
