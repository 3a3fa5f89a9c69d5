"""Round plans: plain NumPy arrays the runner joins with the engine."""

from __future__ import annotations

import dataclasses
import enum

import numpy as np


class Status(enum.IntEnum):
  """What became of a client's update (stored as int8 in plans)."""

  AGGREGATED = 0  # sync: counted in this round's aggregate
  STRAGGLER = 1  # sync: still online but not done (or not among the first K)
  DROPPED = 2  # went offline before finishing
  ACCEPTED = 3  # async: arrived within the staleness bound, buffered
  DISCARDED = 4  # async: arrived staler than max_staleness


def _arrays_dict(obj) -> dict:
  out = {}
  for f in dataclasses.fields(obj):
    v = getattr(obj, f.name)
    out[f.name] = v
  return out


@dataclasses.dataclass(frozen=True, eq=False)
class SyncPlan:
  """One synchronous round.

  Per-client arrays are aligned with ``clients`` (selection order). Times are
  absolute simulated seconds. A client's timeline is ``start`` -> download ->
  ``download_end`` -> local work -> ``compute_end`` -> upload -> ``finish``;
  ``drop_time`` is when it went offline before finishing (``inf`` if it did
  not; in ``endpoints`` mode a drop is only seen at ``finish``).

  Attributes:
    round: round index (0-based).
    start_time: round start (= every selected client's start).
    end_time: round end: the K-th aggregated finish, the last aggregated
      finish if fewer than K finished, the deadline if one is set, or the last
      drop if no one finished. The clock moves here.
    num_target: K, the number of updates wanted.
    clients: int64 ``[m]`` selected population indices.
    status: int8 ``[m]`` `Status` (AGGREGATED, STRAGGLER or DROPPED).
    start, download_end, compute_end, finish, drop_time: float64 ``[m]``.
    weights: float64 ``[m]``: 1.0 for aggregated clients, else 0.
    completed_fraction: float64 ``[m]`` in [0, 1]: the share of its local
      work a client could have done and still uploaded by ``end_time`` (1 for
      aggregated, 0 for dropped); for FedProx-style partial work of
      stragglers.
    aggregated: int64 population indices of the aggregated clients, by
      finish time.
    short: fewer than K updates were aggregated.
    message: a human-readable note when ``short`` (else empty).
  """

  round: int
  start_time: float
  end_time: float
  num_target: int
  clients: np.ndarray
  status: np.ndarray
  start: np.ndarray
  download_end: np.ndarray
  compute_end: np.ndarray
  finish: np.ndarray
  drop_time: np.ndarray
  weights: np.ndarray
  completed_fraction: np.ndarray
  aggregated: np.ndarray
  short: bool
  message: str

  @property
  def duration(self) -> float:
    return self.end_time - self.start_time

  @property
  def stragglers(self) -> np.ndarray:
    return self.clients[self.status == Status.STRAGGLER]

  @property
  def dropped(self) -> np.ndarray:
    return self.clients[self.status == Status.DROPPED]

  def to_dict(self) -> dict:
    """Fields as a dict (arrays and scalars), e.g. to write a timeline."""
    return _arrays_dict(self)


@dataclasses.dataclass(frozen=True, eq=False)
class AsyncPlan:
  """The cohort of clients that started from model ``version`` (FedBuff).

  The engine trains every ACCEPTED client of this cohort from model
  ``version`` as one cohort, adds each update, times ``weight``, into the
  buffer of server step ``arrival_step`` (``>= version``), and then applies
  server step ``version`` (which makes model ``version + 1``): its buffer is
  complete at that point, since every update in it started from a version
  ``<= version``. ``step_*`` list that step's ``K`` updates. A client can
  appear twice in a cohort if it finished and was picked again before the
  version changed.

  Attributes:
    version: model version the cohort starts from (= server step index).
    clients: int64 ``[m]`` population indices, in start order.
    status: int8 ``[m]``: ACCEPTED, DISCARDED or DROPPED.
    start, download_end, compute_end, finish: float64 ``[m]`` (``finish`` is
      the arrival time; for DROPPED clients, the time they went offline).
    arrival_step: int64 ``[m]``: server step that aggregates the update
      (-1 unless ACCEPTED).
    staleness: int64 ``[m]``: server steps between start and arrival
      (-1 for DROPPED).
    weight: float64 ``[m]``: ``1 / sqrt(1 + staleness)`` for ACCEPTED, else 0.
    step_time: time at which server step ``version`` is applied.
    step_clients, step_start_versions: int64 ``[K]``: the updates of step
      ``version``; step_weights: float64 ``[K]``.
  """

  version: int
  clients: np.ndarray
  status: np.ndarray
  start: np.ndarray
  download_end: np.ndarray
  compute_end: np.ndarray
  finish: np.ndarray
  arrival_step: np.ndarray
  staleness: np.ndarray
  weight: np.ndarray
  step_time: float
  step_clients: np.ndarray
  step_start_versions: np.ndarray
  step_weights: np.ndarray

  @property
  def accepted(self) -> np.ndarray:
    return self.clients[self.status == Status.ACCEPTED]

  @property
  def discarded(self) -> np.ndarray:
    return self.clients[self.status == Status.DISCARDED]

  @property
  def dropped(self) -> np.ndarray:
    return self.clients[self.status == Status.DROPPED]

  def to_dict(self) -> dict:
    return _arrays_dict(self)
