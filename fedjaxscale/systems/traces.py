"""`SystemTraces`: per-client device speed, bandwidth and availability."""

from __future__ import annotations

import dataclasses

import numpy as np

from fedjaxscale.systems.availability import Availability
from fedjaxscale.systems.errors import TraceError

MAPPINGS = ("identity", "modulo", "fedscale")


@dataclasses.dataclass(frozen=True, eq=False)
class SystemTraces:
  """System traces of a population of ``N`` clients, columnar.

  Attributes:
    compute_ms: float32 ``[N]``, milliseconds per training sample for the
      forward pass (the latency model applies the backward factor).
    down_kbps: float32 ``[N]``, download bandwidth, kbit/s (1 kbit = 1000 bit).
    up_kbps: float32 ``[N]``, upload bandwidth, kbit/s.
    availability: `Availability` of the same ``N`` clients.
  """

  compute_ms: np.ndarray
  down_kbps: np.ndarray
  up_kbps: np.ndarray
  availability: Availability

  @classmethod
  def create(
    cls, compute_ms, down_kbps, up_kbps, availability: Availability, *, source: str = "<memory>", client_names=None
  ) -> SystemTraces:
    """Validates and returns traces.

    Raises:
      TraceError: a speed that is NaN, infinite or <= 0, a bandwidth that is
        not > 0 (both as the float32 values stored: 1e300 overflows, 1e-50
        underflows), or arrays of different lengths; the message names
        ``source`` and the client.
    """
    name = (lambda i: i) if client_names is None else (lambda i: client_names[i])
    arrays = {}
    for field, value in (("compute_ms_per_sample", compute_ms), ("down_kbps", down_kbps), ("up_kbps", up_kbps)):
      a = np.asarray(value, np.float64)
      if a.ndim != 1 or a.size == 0:
        raise TraceError(
          source, None, f"{field} must be a non-empty 1-D array" if a.size == 0 else f"{field} must be 1-D"
        )
      # Checked as stored (float32): 1e300 would become inf there, and 1e-50 would become 0.
      with np.errstate(over="ignore", under="ignore"):
        stored = a.astype(np.float32)
      bad = ~np.isfinite(stored) | (stored <= 0)
      if bad.any():
        i = int(np.flatnonzero(bad)[0])
        got = "NaN" if np.isnan(a[i]) else a[i]
        why = " (as float32)" if np.isfinite(a[i]) and a[i] > 0 else ""
        raise TraceError(
          source, name(i), f"{field} must be finite and > 0{why}, got {got}; float32 holds about 1.4e-45 to 3.4e38"
        )
      arrays[field] = stored
    sizes = {a.size for a in arrays.values()} | {availability.num_clients}
    if len(sizes) != 1:
      raise TraceError(
        source, None, f"speeds, bandwidths and availability cover different numbers of clients: {sorted(sizes)}"
      )
    return cls(arrays["compute_ms_per_sample"], arrays["down_kbps"], arrays["up_kbps"], availability)

  @property
  def num_clients(self) -> int:
    return int(self.compute_ms.size)

  @property
  def nbytes(self) -> int:
    return int(self.compute_ms.nbytes + self.down_kbps.nbytes + self.up_kbps.nbytes + self.availability.nbytes)

  def take(self, members) -> SystemTraces:
    """Traces of a new population whose member ``i`` is ``members[i]`` here."""
    members = np.asarray(members, np.int64)
    return SystemTraces(
      self.compute_ms[members], self.down_kbps[members], self.up_kbps[members], self.availability.take(members)
    )

  def for_population(self, num_clients: int, mapping: str = "modulo") -> SystemTraces:
    """Assigns a trace entry to each of ``num_clients`` population members.

    Args:
      num_clients: population size; members are ``0..num_clients-1`` in the
        dataset's client order.
      mapping: ``'identity'`` (member i -> entry i; needs enough entries),
        ``'modulo'`` (member i -> entry ``i % len``), or ``'fedscale'``
        (member i -> entry ``(i + 1) % len``: FedScale numbers clients from 1
        and maps client id ``c`` to entry ``c % len``).
    """
    return self.take(population_rows(num_clients, self.num_clients, mapping))


def population_rows(num_clients: int, num_entries: int, mapping: str) -> np.ndarray:
  """Trace entry of each population member under ``mapping`` (see
  `SystemTraces.for_population`)."""
  if mapping not in MAPPINGS:
    raise ValueError(f"mapping must be one of {MAPPINGS}, got {mapping!r}")
  ids = np.arange(num_clients, dtype=np.int64)
  if mapping == "identity":
    if num_clients > num_entries:
      raise ValueError(f"identity mapping needs {num_clients} trace entries, the trace has {num_entries}")
    return ids
  if mapping == "fedscale":
    ids += 1
  return ids % num_entries
