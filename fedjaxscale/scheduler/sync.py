"""The synchronous round planner: over-commitment, deadlines, drop-outs.

Each round, at clock ``t``: the policy picks ``ceil(overcommit * K)`` of the
clients online at ``t`` (fewer if fewer are online; if none is, the clock
first moves to the next time one is). Every picked client downloads, trains
and uploads (`LatencyModel`). One whose availability ends before it finishes
drops out: in ``'window'`` mode (default) it must stay online for all of
``[t, finish]``; in ``'endpoints'`` mode, FedScale's rule, it must only be
online at ``t`` and at ``finish``. Without a deadline the first K to finish
are aggregated and the round ends at the K-th finish; with one, every client
that finishes by ``t + deadline`` is aggregated and the round ends at the
deadline. If fewer than K finish, those that did are aggregated, the plan
says so, and the round ends at the last aggregated finish (or, if no one
finished, at the last drop-out), so the planner never stalls.

FedScale (Lai et al., ICML 2022) selects ``int(1.3 K)`` and ends the round at
the K-th finish: ``overcommit=1.3, availability_mode='endpoints'`` and
``round_up=False``.
"""

from __future__ import annotations

import dataclasses
import math

import numpy as np

from fedjaxscale.scheduler import rng as rng_lib
from fedjaxscale.scheduler.clock import Clock
from fedjaxscale.scheduler.plans import Status, SyncPlan
from fedjaxscale.scheduler.selection import SelectionPolicy, UniformSelection
from fedjaxscale.systems.latency import LatencyModel
from fedjaxscale.systems.traces import SystemTraces

AVAILABILITY_MODES = ("window", "endpoints")


@dataclasses.dataclass(frozen=True)
class SyncConfig:
  """Synchronous round settings.

  Attributes:
    clients_per_round: K, the updates aggregated per round.
    overcommit: clients asked per round = ceil(overcommit * K).
    deadline_s: optional round deadline, seconds after the round start.
    availability_mode: ``'window'`` or ``'endpoints'`` (module docstring).
    round_up: ceil (True) or FedScale's int() (False) of overcommit * K.
  """

  clients_per_round: int
  overcommit: float = 1.3
  deadline_s: float | None = None
  availability_mode: str = "window"
  round_up: bool = True

  def __post_init__(self):
    if self.clients_per_round < 1 or self.overcommit < 1:
      raise ValueError("need clients_per_round >= 1 and overcommit >= 1")
    if self.availability_mode not in AVAILABILITY_MODES:
      raise ValueError(f"availability_mode must be one of {AVAILABILITY_MODES}")
    if self.deadline_s is not None and not self.deadline_s > 0:
      raise ValueError("deadline_s must be > 0")

  @property
  def num_selected(self) -> int:
    x = self.overcommit * self.clients_per_round
    # Guard against 1.3 * 10 = 13.000000000000002 rounding up to 14.
    x = round(x, 9)
    return max(int(math.ceil(x) if self.round_up else int(x)), 1)


class SyncPlanner:
  """Plans synchronous rounds on the simulated clock.

  Args:
    traces: the population's `SystemTraces` (member i = dataset client i).
    latency: the `LatencyModel`.
    config: `SyncConfig`.
    num_samples: int64 ``[N]`` samples per client (epoch mode needs it).
    policy: a `SelectionPolicy`; default `UniformSelection`.
    seed: fixes every random choice.
    start_time: initial clock, seconds.

  Example:
    >>> planner = SyncPlanner(traces, lm, SyncConfig(100))  # doctest: +SKIP
    >>> plan = planner.plan_round()                         # doctest: +SKIP
    >>> planner.report(plan, mean_sq_losses)                # doctest: +SKIP
  """

  def __init__(
    self,
    traces: SystemTraces,
    latency: LatencyModel,
    config: SyncConfig,
    num_samples=None,
    policy: SelectionPolicy | None = None,
    seed: int = 0,
    start_time: float = 0.0,
  ):
    self.traces = traces
    self.latency = latency
    self.config = config
    self.num_samples = None if num_samples is None else np.asarray(num_samples, np.int64)
    if self.num_samples is not None and self.num_samples.shape != (traces.num_clients,):
      raise ValueError(f"num_samples must have shape ({traces.num_clients},)")
    self.policy = policy if policy is not None else UniformSelection()
    self.rng = rng_lib.make_rng(seed)
    self.clock = Clock(start_time)
    self.round = 0

  # ------------------------------------------------------------------ plan

  def plan_round(self) -> SyncPlan:
    """Plans the next round, advances the clock to its end, returns it."""
    cfg = self.config
    av = self.traces.availability
    t = self.clock.now
    clients = self.policy.select(self.rng, av, t, cfg.num_selected, self.round)
    takes_all = getattr(self.policy, "takes_all", False)  # Poisson: every sampled client counts
    tries = 0
    while clients.size == 0 and not takes_all:
      t_next = av.next_online_time(t)
      if not math.isfinite(t_next):
        raise RuntimeError("no client is ever online in these traces")
      # Floating-point guard: nudge forward if the boundary rounds to offline.
      t = t_next if t_next > t else math.nextafter(t, math.inf)
      self.clock.advance_to(t)
      clients = self.policy.select(self.rng, av, t, cfg.num_selected, self.round)
      tries += 1
      if tries > 1000:
        raise RuntimeError("could not find an online client")
    lat = self.latency.latency(self.traces, clients, self.num_samples)
    start = np.full(clients.size, t)
    download_end = start + lat.download
    compute_end = download_end + lat.compute
    finish = compute_end + lat.upload
    if cfg.availability_mode == "window":
      until = av.online_until(clients, t)
      completes = finish <= until
      drop_time = np.where(completes, np.inf, np.maximum(until, t))
    else:
      completes = av.is_online(clients, finish)
      drop_time = np.where(completes, np.inf, finish)

    k = clients.size if takes_all else cfg.clients_per_round
    done = np.flatnonzero(completes)
    done = done[np.argsort(finish[done], kind="stable")]
    if cfg.deadline_s is None:
      agg = done[:k]
      end = float(finish[agg[-1]]) if agg.size else float(drop_time.max(initial=t))
    else:
      end = t + cfg.deadline_s
      agg = done[finish[done] <= end]
    status = np.full(clients.size, Status.STRAGGLER, np.int8)
    status[drop_time <= end] = Status.DROPPED
    status[agg] = Status.AGGREGATED
    weights = np.zeros(clients.size)
    weights[agg] = 1.0
    fraction = _completed_fraction(download_end, lat.compute, lat.upload, end)
    fraction[status == Status.AGGREGATED] = 1.0
    fraction[status == Status.DROPPED] = 0.0
    short = agg.size < k
    message = ""
    if short:
      message = (
        f"round {self.round + 1}: {agg.size} of {k} updates aggregated "
        f"({clients.size} selected, {int(completes.sum())} finished"
        + (f", deadline {cfg.deadline_s}s" if cfg.deadline_s else "")
        + ")"
      )
    plan = SyncPlan(
      round=self.round,
      start_time=t,
      end_time=end,
      num_target=k,
      clients=clients,
      status=status,
      start=start,
      download_end=download_end,
      compute_end=compute_end,
      finish=finish,
      drop_time=drop_time,
      weights=weights,
      completed_fraction=fraction,
      aggregated=clients[agg],
      short=bool(short),
      message=message,
    )
    self.clock.advance_to(end)
    self.round += 1
    return plan

  def report(self, plan: SyncPlan, mean_sq_losses, finite=None) -> None:
    """Feeds a round's training losses back to the policy (Oort).

    Args:
      plan: the round's plan.
      mean_sq_losses: float ``[len(plan.aggregated)]``, per aggregated
        client (same order): mean over its trained examples of the squared
        per-example loss, from the engine.
      finite: optional bool ``[len(plan.aggregated)]``: False for clients whose
        update was non-finite (left out of the aggregate); they are left out of
        the feedback too. Default: the clients whose loss is finite.
    """
    losses = np.asarray(mean_sq_losses, np.float64).reshape(-1)
    keep = np.isfinite(losses) if finite is None else np.asarray(finite, bool) & np.isfinite(losses)
    pos = {int(c): i for i, c in enumerate(plan.clients)}
    idx = np.array([pos[int(c)] for c in plan.aggregated], np.int64)
    durations = plan.finish[idx] - plan.start[idx] if idx.size else idx * 0.0
    self.policy.update(plan.round, plan.aggregated[keep], losses[keep], durations[keep])

  # ------------------------------------------------------------------ state

  def state_dict(self) -> dict:
    """Everything that determines future plans, as arrays/ints/floats/strs."""
    return {
      "time": self.clock.now,
      "round": self.round,
      "rng": rng_lib.rng_state_dict(self.rng),
      "policy": self.policy.state_dict(),
    }

  def load_state_dict(self, state: dict) -> None:
    """Restores `state_dict` output; later plans equal the uninterrupted
    run's."""
    self.clock = Clock(float(state["time"]))
    self.round = int(state["round"])
    self.rng = rng_lib.rng_from_state_dict(state["rng"])
    self.policy.load_state_dict(state["policy"])


def _completed_fraction(download_end, compute_s, upload_s, end) -> np.ndarray:
  """Share of the local work that fits between the download and a full
  upload finishing by ``end``."""
  room = end - upload_s - download_end
  with np.errstate(divide="ignore", invalid="ignore"):
    frac = np.where(compute_s > 0, room / compute_s, np.where(room >= 0, 1.0, 0.0))
  return np.clip(frac, 0.0, 1.0)
