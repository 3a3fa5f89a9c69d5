"""Choosing an execution strategy per chunk shape by timing the candidates (``strategy="auto"``).

``StrategyChooser`` is the part of ``CompiledRounds`` that, on the first chunk of a new shape,
compiles the candidates (``strategies.candidates``), times each on that chunk (interleaved, so a
burst of load hits every candidate alike), keeps the fastest and records the choice; a shape that
differs from a timed one only in its lane count reuses that winner, and a resumed run adopts the
choices recorded before. In a multi-process run every decision is taken on the slowest process's
times, so that every process runs the same program.
"""

import logging
import time

import jax
import numpy as np

from fedjaxscale.engine import strategies
from fedjaxscale.engine.lanes import HostLanes
from fedjaxscale.engine.strategies import Strategy

AUTOTUNE_SLOWER = 2.0  # a candidate whose first timed run is this much slower than the best gets no second run
# Another candidate replaces the first (plain ``vmap``) only when this much faster: timing noise
# alone then rarely changes the choice (and so the last bits of the results) between runs.
AUTOTUNE_MARGIN = 1.1
# A chunk that runs faster than this under plain ``vmap`` is not tuned: other candidates could
# save little per round and would cost a compile each (tests' tiny models stay at one compile).
AUTOTUNE_MIN_SECONDS = 0.05
# A candidate's first run pays one-off costs (first touch of its buffers: 70 ms against 17 ms
# warm for plain ``vmap`` of 1,000 logistic-regression clients, which then lost to ``map:4``);
# a candidate whose first run took less than this is always run again, and judged by its best.
AUTOTUNE_RETIME_SECONDS = 0.25

log = logging.getLogger(__name__)


class StrategyChooser:
  """``CompiledRounds``' strategy choice (a mixin: it uses the runner's compile cache and lock)."""

  def _choose(self, key, program, shared, lanes, features, data, rng):
    """The explicit strategy, or the fastest candidate timed on this chunk's inputs."""
    per_device = lanes.num_lanes // self.client_multiple
    shape = self._shape(lanes, features)
    adopted = self.adopted.get(shape_key(shape)) if self.strategy is None else None
    timed = self._timed_sibling(program, shape) if self.strategy is None and adopted is None else None
    if self.strategy is not None or adopted is not None or timed is not None:
      given = self.strategy or adopted or strategies.parse_strategy(timed["chosen"])
      chosen = self._candidate(key, given, program, shared, lanes, features, rng)
      record = {"shape": shape, "candidates": {}, "chosen": str(given)}
      if adopted is not None:
        record["adopted"] = True  # measured before the run was resumed; not timed again
      elif timed is not None:
        record["timed_at"] = dict(timed["shape"])  # the same program at another lane count
    else:
      first = self._candidate(key, Strategy("vmap"), program, shared, lanes, features, rng)
      todo = strategies.candidates(jax.default_backend(), per_device, first.has_conv)
      device_features = self._device_features(features)

      def timer(s: Strategy) -> float:  # compiles the candidate on its first run
        return _time(self._candidate(key, s, program, shared, lanes, features, rng), shared, device_features, data, rng)

      seconds, fastest = time_candidates(todo, timer)
      chosen = first if fastest is None else self._candidate(key, fastest, program, shared, lanes, features, rng)
      record = {"shape": shape, "candidates": seconds, "chosen": str(chosen.strategy)}
      log.info("engine strategy for %s: %s (seconds per chunk: %s)", shape, record["chosen"], seconds)
    with self._lock:
      self._programs[key] = chosen
      for k in [k for k in self._candidates if k[0] == key]:  # free the losers' executables
        del self._candidates[k]
      self.choices.append(record)
      self._choice_programs.append(program)
    return chosen

  def _probe_strategy(self, program, lanes: HostLanes, features) -> Strategy:
    """What the memory probe compiles: the strategy that will run when it is known already (an
    explicit one, or a timed sibling's winner), else ``vmap``, the first candidate."""
    if self.strategy is not None:
      return self.strategy
    timed = self._timed_sibling(program, self._shape(lanes, features))
    return strategies.parse_strategy(timed["chosen"]) if timed is not None else Strategy("vmap")

  def _timed_sibling(self, program, shape: dict) -> dict | None:
    """The record of this program timed at a shape that differs from ``shape`` only in its lane
    count: its winner is reused, since each candidate costs a compile (minutes for a CNN on CPU)
    and the ranking follows the per-lane program, not the number of lanes."""
    same = {k: v for k, v in shape.items() if k != "lanes"}
    with self._lock:
      for record, owner in zip(self.choices, self._choice_programs):
        if (
          owner is program
          and record["candidates"]
          and {k: v for k, v in record["shape"].items() if k != "lanes"} == same
        ):
          return record
    return None

  def adopt(self, choices) -> None:
    """Takes the strategies an earlier process of this run chose (``Engine.strategy_choices``),
    so a resumed run runs the very programs it ran before instead of timing them again: timing
    can choose differently, and strategies agree only to float rounding."""
    for record in choices:
      if record.get("candidates") or record.get("adopted") or record.get("timed_at"):  # chosen by timing
        self.adopted[shape_key(record["shape"])] = strategies.parse_strategy(record["chosen"])


def time_candidates(todo: list[Strategy], timer) -> tuple[dict, Strategy | None]:
  """Times the candidates ``todo`` (the first is the default) with ``timer(strategy) -> seconds``
  of one chunk, as the engine's tuners do, and returns ``(seconds by str(strategy), the one to
  keep)``; ``({}, None)`` when there is one candidate, nothing to time.

  The first candidate runs again when its first run took ``AUTOTUNE_MIN_SECONDS`` to
  ``AUTOTUNE_RETIME_SECONDS`` (a first run pays one-off costs); if it is then under
  ``AUTOTUNE_MIN_SECONDS`` the others are not tried (a quick chunk is not worth their compiles).
  After every candidate has run once, each runs a second time, interleaved (a burst of load then
  hits all alike), unless it took over ``AUTOTUNE_SLOWER`` times the best; each keeps its faster
  run. The fastest replaces the first only when ``AUTOTUNE_MARGIN`` faster (``_agreed_fastest``).
  """
  seconds, retimed = {}, set()
  for s in todo if len(todo) > 1 else ():
    seconds[str(s)] = timer(s)
    if len(seconds) == 1:
      if AUTOTUNE_MIN_SECONDS <= _agreed_max(seconds[str(s)]) < AUTOTUNE_RETIME_SECONDS:
        seconds[str(s)] = min(seconds[str(s)], timer(s))
        retimed.add(str(s))  # warm: is it still slow enough to be worth tuning?
      if _agreed_max(seconds[str(s)]) < AUTOTUNE_MIN_SECONDS:
        break  # too quick to be worth more compiles
  timed = [s for s in todo if str(s) in seconds]
  best = min(seconds.values(), default=None)
  for s in timed if len(timed) > 1 else ():
    t = seconds[str(s)]
    if str(s) in retimed:
      continue
    if jax.process_count() > 1 or t <= AUTOTUNE_SLOWER * best or t < AUTOTUNE_RETIME_SECONDS:
      seconds[str(s)] = min(t, timer(s))
  if not timed:
    return seconds, None
  return seconds, timed[_agreed_fastest([seconds[str(s)] for s in timed])]


def _time(compiled, shared, device_features, data, rng) -> float:
  """Seconds of one run of a chunk under ``compiled`` (the engine times each candidate twice,
  interleaved; every process of a multi-process run makes the same runs: each is a collective)."""
  t0 = time.perf_counter()
  with jax.transfer_guard("allow"):
    jax.block_until_ready(compiled.step(compiled.zeros(), shared, device_features, data, rng))
  return time.perf_counter() - t0


def _agreed_max(seconds: float) -> float:
  """The largest of every process's ``seconds`` (so that all take the same branch)."""
  if jax.process_count() == 1:
    return seconds
  from jax.experimental import multihost_utils

  return float(np.max(multihost_utils.process_allgather(np.float32(seconds))))


def _agreed_fastest(seconds: list[float]) -> int:
  """The index of the fastest candidate (the first unless another beats it by ``AUTOTUNE_MARGIN``);
  across processes, by the slowest process's times, so that every process runs the same program."""
  times = np.asarray(seconds, np.float64)
  if jax.process_count() > 1:
    from jax.experimental import multihost_utils

    times = np.asarray(multihost_utils.process_allgather(times)).max(axis=0)
  best = int(np.argmin(times))
  return best if times[best] * AUTOTUNE_MARGIN < times[0] else 0


def shape_key(shape: dict) -> tuple:
  """A chunk shape's record (``strategy_choices``' ``shape``) as a hashable key."""
  return tuple(sorted((str(k), v if isinstance(v, (bool, int, str)) else str(v)) for k, v in shape.items()))
