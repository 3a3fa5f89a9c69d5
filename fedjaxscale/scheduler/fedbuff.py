"""The asynchronous planner: buffered asynchronous aggregation (FedBuff).

Nguyen et al., "Federated Learning with Buffered Asynchronous Aggregation",
AISTATS 2022 (arXiv:2106.06639), as FedScale implements it: ``max_concurrency``
clients are in flight; each trains on the model version current when it
starts; every arriving update with staleness (server steps since its start)
at most ``max_staleness`` joins the buffer with weight ``1/sqrt(1 +
staleness)``, staler ones are discarded; each time the buffer holds ``K``
updates the server steps (version + 1). A freed slot is refilled at once by
the selection policy among clients online and not already in flight. FedScale
checks availability only at the start (``availability_mode='start'``);
``'window'`` (default) drops a client that goes offline before it finishes,
and ``'endpoints'`` checks start and finish.

The planner is an event simulation that runs ahead of what it hands out: it
emits the cohort that started from version ``v`` once every member's fate is
known, so the engine trains each cohort once, from the model it started on
(see `AsyncPlan`).
"""

from __future__ import annotations

import dataclasses
import heapq
import math

import numpy as np

from fedjaxscale.scheduler import rng as rng_lib
from fedjaxscale.scheduler.plans import AsyncPlan, Status
from fedjaxscale.scheduler.selection import SelectionPolicy, UniformSelection
from fedjaxscale.systems.latency import LatencyModel
from fedjaxscale.systems.traces import SystemTraces

AVAILABILITY_MODES = ("window", "start", "endpoints")
_PENDING = -1
# Record columns.
_CLIENT, _VERSION, _START, _DL, _COMP, _UL, _END, _OK, _STATUS, _ARRIVAL = range(10)
_FLOAT_COLS = (_START, _DL, _COMP, _UL, _END)


@dataclasses.dataclass(frozen=True)
class AsyncConfig:
  """FedBuff settings (FedScale's defaults: buffer = clients per round,
  ``max_concurrency=10``, ``max_staleness=5``, ``availability_mode='start'``).

  Attributes:
    buffer_size: K, updates per server step.
    max_concurrency: clients in flight at once.
    max_staleness: updates staler than this are discarded.
    availability_mode: ``'window'``, ``'start'`` or ``'endpoints'``.
    max_events: safety bound on events simulated per emitted cohort.
  """

  buffer_size: int
  max_concurrency: int
  max_staleness: int = 5
  availability_mode: str = "window"
  max_events: int = 1_000_000

  def __post_init__(self):
    if self.buffer_size < 1 or self.max_concurrency < 1:
      raise ValueError("need buffer_size >= 1 and max_concurrency >= 1")
    if self.max_staleness < 0:
      raise ValueError("max_staleness must be >= 0")
    if self.availability_mode not in AVAILABILITY_MODES:
      raise ValueError(f"availability_mode must be one of {AVAILABILITY_MODES}")


class AsyncPlanner:
  """Plans FedBuff training as per-version cohorts (module docstring).

  Args:
    traces, latency, num_samples, policy, seed, start_time: as `SyncPlanner`.
    config: `AsyncConfig`.

  Example:
    >>> planner = AsyncPlanner(traces, lm, AsyncConfig(100, 1000))  # doctest: +SKIP
    >>> plan = planner.next_plan()   # cohort of version 0, then step 0
  """

  def __init__(
    self,
    traces: SystemTraces,
    latency: LatencyModel,
    config: AsyncConfig,
    num_samples=None,
    policy: SelectionPolicy | None = None,
    seed: int = 0,
    start_time: float = 0.0,
  ):
    self.traces = traces
    self.latency = latency
    self.config = config
    self.num_samples = None if num_samples is None else np.asarray(num_samples, np.int64)
    self.policy = policy if policy is not None else UniformSelection()
    self.rng = rng_lib.make_rng(seed)
    self._reset(float(start_time))

  def _reset(self, time: float):
    self.time = time  # time of the last processed event
    self.version = 0  # current server model version
    self.buffered = 0  # updates in the current buffer
    self.events = 0  # events processed so far
    self.next_emit = 0  # next cohort version to hand out
    self._next_id = 0
    self._records: dict[int, list] = {}  # record id -> columns
    self._heap: list[tuple[float, int]] = []  # (end time, record id)
    self._busy = np.zeros(self.traces.num_clients, bool)
    self._unresolved: dict[int, int] = {}  # start version -> pending count
    self._steps: dict[int, list] = {}  # step -> [time, [record ids]]

  # ------------------------------------------------------------------ API

  def next_plan(self) -> AsyncPlan:
    """The cohort that starts from version ``next_emit`` (then step it)."""
    v = self.next_emit
    budget = self.config.max_events
    while self.version <= v or self._unresolved.get(v, 0):
      self._advance()
      budget -= 1
      if budget <= 0:
        raise RuntimeError(
          f"cohort {v} not complete after {self.config.max_events} events "
          f"(server version {self.version}): can any client finish within "
          "its availability?"
        )
    ids = sorted(i for i, r in self._records.items() if r[_VERSION] == v)
    recs = [self._records[i] for i in ids]
    cols = list(zip(*recs)) if recs else [()] * 10
    clients = np.asarray(cols[_CLIENT], np.int64)
    status = np.asarray(cols[_STATUS], np.int8)
    start = np.asarray(cols[_START], np.float64)
    dl_end = start + np.asarray(cols[_DL], np.float64)
    comp_end = dl_end + np.asarray(cols[_COMP], np.float64)
    arrival = np.asarray(cols[_ARRIVAL], np.int64)
    # Arrival holds the server version when the update came back, so
    # staleness = arrival - v; only accepted updates keep an arrival step.
    dropped = status == Status.DROPPED
    staleness = np.where(dropped, -1, arrival - v)
    arrival = np.where(status == Status.ACCEPTED, arrival, -1)
    weight = np.where(status == Status.ACCEPTED, 1.0 / np.sqrt(1.0 + np.maximum(staleness, 0)), 0.0)
    step_time, members = self._steps.pop(v)
    step_recs = members
    for i in ids:
      del self._records[i]
    self._unresolved.pop(v, None)
    self.next_emit += 1
    sv = np.asarray([r[1] for r in step_recs], np.int64)
    return AsyncPlan(
      version=v,
      clients=clients,
      status=status,
      start=start,
      download_end=dl_end,
      compute_end=comp_end,
      finish=np.asarray(cols[_END], np.float64),
      arrival_step=arrival,
      staleness=staleness.astype(np.int64),
      weight=weight,
      step_time=float(step_time),
      step_clients=np.asarray([r[0] for r in step_recs], np.int64),
      step_start_versions=sv,
      step_weights=1.0 / np.sqrt(1.0 + (v - sv)),
    )

  def report(self, plan: AsyncPlan, mean_sq_losses, finite=None) -> None:
    """Feeds the accepted clients' losses (aligned with ``plan.accepted``)
    back to the policy; ``finite`` (same alignment) False leaves a client
    with a non-finite update out (default: those with a non-finite loss)."""
    ok = plan.status == Status.ACCEPTED
    losses = np.asarray(mean_sq_losses, np.float64).reshape(-1)
    keep = np.isfinite(losses) if finite is None else np.asarray(finite, bool) & np.isfinite(losses)
    clients, durations = plan.clients[ok], plan.finish[ok] - plan.start[ok]
    self.policy.update(plan.version, clients[keep], losses[keep], durations[keep])

  # ------------------------------------------------------------------ events

  def _advance(self) -> None:
    """Processes one event (or fills empty slots)."""
    if not self._heap:
      self._refill(self.time)
      if not self._heap:
        t = self.traces.availability.next_online_time(self.time)
        if not math.isfinite(t):
          raise RuntimeError("no client is ever online in these traces")
        self.time = t if t > self.time else math.nextafter(self.time, math.inf)
        self._refill(self.time)
      return
    end, rid = heapq.heappop(self._heap)
    self.time = end
    self.events += 1
    rec = self._records[rid]
    self._busy[rec[_CLIENT]] = False
    self._unresolved[rec[_VERSION]] -= 1
    if not rec[_OK]:
      rec[_STATUS] = int(Status.DROPPED)
    else:
      staleness = self.version - rec[_VERSION]
      rec[_ARRIVAL] = self.version
      if staleness > self.config.max_staleness:
        rec[_STATUS] = int(Status.DISCARDED)
      else:
        rec[_STATUS] = int(Status.ACCEPTED)
        step = self._steps.setdefault(self.version, [None, []])
        step[1].append((rec[_CLIENT], rec[_VERSION]))
        self.buffered += 1
        if self.buffered == self.config.buffer_size:
          step[0] = end
          self.version += 1
          self.buffered = 0
    self._refill(end)

  def _refill(self, t: float) -> None:
    need = self.config.max_concurrency - len(self._heap)
    if need <= 0:
      return
    av = self.traces.availability
    mode = self.config.availability_mode
    # A client at the very end of its on-slot (window mode) would drop at
    # once, at the same time, and could be picked again forever: it is not
    # started, and another idle online client is drawn in its place, so
    # max_concurrency clients stay in flight whenever enough are idle.
    exclude = self._busy.copy()
    chosen = []
    while need > 0:
      picks = self.policy.select(self.rng, av, t, need, self.version, exclude=exclude)
      if picks.size == 0:
        break
      exclude[picks] = True
      if mode == "window":
        picks = picks[av.online_until(picks, t) > t]
      chosen.append(picks)
      need -= picks.size
    clients = np.concatenate(chosen) if chosen else np.zeros(0, np.int64)
    if clients.size == 0:
      return
    lat = self.latency.latency(self.traces, clients, self.num_samples)
    finish = t + lat.total
    if mode == "window":
      until = av.online_until(clients, t)
      ok = finish <= until
      end = np.where(ok, finish, until)
    elif mode == "endpoints":
      ok = av.is_online(clients, finish)
      end = finish
    else:
      ok = np.ones(clients.size, bool)
      end = finish
    self._busy[clients] = True
    v = self.version
    self._unresolved[v] = self._unresolved.get(v, 0) + clients.size
    for i in range(clients.size):
      rid = self._next_id
      self._next_id += 1
      self._records[rid] = [
        int(clients[i]),
        v,
        t,
        float(lat.download[i]),
        float(lat.compute[i]),
        float(lat.upload[i]),
        float(end[i]),
        bool(ok[i]),
        _PENDING,
        -1,
      ]
      heapq.heappush(self._heap, (float(end[i]), rid))

  # ------------------------------------------------------------------ state

  def state_dict(self) -> dict:
    """Exact simulation state (arrays, ints, floats)."""
    ids = np.array(sorted(self._records), np.int64)
    recs = [self._records[i] for i in ids]
    cols = list(zip(*recs)) if recs else [()] * 10
    steps = sorted(self._steps)
    members = [m for s in steps for m in self._steps[s][1]]
    return {
      "time": self.time,
      "version": self.version,
      "buffered": self.buffered,
      "events": self.events,
      "next_emit": self.next_emit,
      "next_id": self._next_id,
      "rng": rng_lib.rng_state_dict(self.rng),
      "policy": self.policy.state_dict(),
      "record_ids": ids,
      "records_int": np.array([cols[c] for c in (_CLIENT, _VERSION, _OK, _STATUS, _ARRIVAL)], np.int64).reshape(
        5, len(recs)
      ),
      "records_float": np.array([cols[c] for c in _FLOAT_COLS], np.float64).reshape(5, len(recs)),
      "step_index": np.array(steps, np.int64),
      "step_time": np.array([np.nan if self._steps[s][0] is None else self._steps[s][0] for s in steps], np.float64),
      "step_count": np.array([len(self._steps[s][1]) for s in steps], np.int64),
      "step_members": np.array(members, np.int64).reshape(len(members), 2),
    }

  def load_state_dict(self, state: dict) -> None:
    self._reset(float(state["time"]))
    for k in ("version", "buffered", "events", "next_emit"):
      setattr(self, k, int(state[k]))
    self._next_id = int(state["next_id"])
    self.rng = rng_lib.rng_from_state_dict(state["rng"])
    self.policy.load_state_dict(state["policy"])
    ints, floats = state["records_int"], state["records_float"]
    for j, rid in enumerate(np.asarray(state["record_ids"]).tolist()):
      client, version, ok, status, arrival = (int(x) for x in ints[:, j])
      start, dl, comp, ul, end = (float(x) for x in floats[:, j])
      self._records[rid] = [client, version, start, dl, comp, ul, end, bool(ok), status, arrival]
      if status == _PENDING:
        self._heap.append((end, rid))
        self._busy[client] = True
        self._unresolved[version] = self._unresolved.get(version, 0) + 1
    heapq.heapify(self._heap)
    members = [tuple(int(x) for x in m) for m in state["step_members"]]
    pos = 0
    for s, t, c in zip(state["step_index"].tolist(), state["step_time"].tolist(), state["step_count"].tolist()):
      self._steps[s] = [None if math.isnan(t) else t, members[pos : pos + c]]
      pos += c
