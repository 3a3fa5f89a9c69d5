"""Several rounds in one compiled program: a ``lax.scan`` over rounds, the server update inside.

With a selection that does not depend on training (uniform, Poisson), the cohorts of the next R
rounds can be planned and gathered before any of them trains. Their lanes are stacked on a
leading round axis and one program runs them: each scan step is the engine's compiled round (the
same traced function ``CompiledRounds`` compiles for one chunk) followed by the algorithm's server
update, whose output state is the next step's input. One call, one transfer of R rounds' inputs,
and no per-round host work between rounds: for small models and cohorts, where a round is a
millisecond of device work, the per-call costs are what R rounds share.

The result equals R calls of the algorithm's ``apply`` to float rounding (the same arithmetic,
compiled into one program rather than R). It applies when every cohort has one part of one
shape that fits one chunk and all the rounds' inputs fit a quarter of the memory budget, on the
compiled backend in a single process; otherwise the caller runs the rounds one at a time
(``Engine.run_rounds`` returns None).
"""

from collections.abc import Callable, Sequence
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

from fedjaxscale.core.cohort import Cohort
from fedjaxscale.engine.lanes import HostLanes, host_lanes, pad_lanes
from fedjaxscale.engine.placement import (
  CLIENTS,
  Resident,
  allow_transfers,
  default_memory_budget,
  feature_identity,
  feature_specs,
  replicated_arguments,
  replicated_specs,
)
from fedjaxscale.engine.program import zero_aggregate

INPUT_SHARE = 0.25  # the most of the memory budget that all the rounds' inputs of one call may take


class RoundsResult(NamedTuple):
  """What `RoundsRunner.run_rounds` returns: the state after the last round, and per round
  (leading axis R) the aggregate, the lanes' metrics and non-finite flags, with the lanes each
  round ran."""

  state: Any
  aggregates: Any
  metrics: Any
  nonfinite: jax.Array
  lanes: list[HostLanes]


def stack_keys(rngs) -> jax.Array:
  """``rngs`` (a ``[R]`` key array, or a sequence of keys) as one ``[R]`` key array."""
  if isinstance(rngs, jax.Array) and rngs.ndim == 1:
    return rngs
  return jnp.stack(list(rngs))


class RoundsRunner:
  """``CompiledRounds``' several-rounds program (a mixin: it uses the runner's inputs, chunk
  limits, strategy choices and compile counters)."""

  def run_rounds(
    self,
    program,
    shared_of: Callable[[Any], Any],
    server_update: Callable[[Any, Any], Any],
    state,
    cohorts: Sequence[Cohort],
    rngs,
  ) -> RoundsResult | None:
    """Runs ``len(cohorts)`` rounds as one program, or returns None where that does not apply.

    Args:
      program: the clients' ``ClientProgram``.
      shared_of: ``state -> shared``, what the clients of a round receive (traced).
      server_update: ``(state, aggregate) -> state`` (traced inside the scan).
      state: the server state before the first round (replicated arrays).
      cohorts: one cohort per round.
      rngs: one key per round.
    """
    if jax.process_count() > 1 or not cohorts:
      return None
    if any(len(c.parts) != 1 for c in cohorts):
      return None
    parts = [c.parts[0] for c in cohorts]
    sources = [self._features(p.features) for p in parts]
    if any(isinstance(f, Resident) for f in sources):  # rows index one resident copy: the same for all
      if any(feature_identity(p.features) != feature_identity(parts[0].features) for p in parts[1:]):
        return None
    elif any(
      feature_specs(f) != feature_specs(sources[0]) for f in sources[1:]
    ):  # each round's own examples, one shape
      return None
    lanes = [host_lanes(p, c) for p, c in zip(parts, cohorts)]
    layout = _layout(lanes[0])
    if any(_layout(x) != layout for x in lanes[1:]):
      return None
    rngs = stack_keys(rngs)
    if rngs.shape[0] != len(cohorts):
      raise ValueError(f"run_rounds needs one key per cohort: {len(cohorts)} cohorts, {rngs.shape[0]} keys")
    features = sources[0]
    shared = shared_of(state)
    limit = self._chunk_limit(program, shared, lanes[0], features, rngs[0])
    sizes = self._chunk_sizes(program, shared, lanes[0], features, rngs[0], limit, None)
    if len(sizes) != 1:  # a round of several chunks: one at a time
      return None
    lanes = [pad_lanes(x, sizes[0]) for x in lanes]
    per_round = [self._put_sharded(x, f) for x, f in zip(lanes, sources)]
    budget = self.memory_budget_bytes or default_memory_budget()
    if len(cohorts) * sum(np.asarray(x).nbytes for x in jax.tree.leaves(per_round[0])) > INPUT_SHARE * budget:
      return None  # every round's inputs on the devices at once would crowd the memory budget
    data = jax.tree.map(lambda *xs: np.stack(xs), *per_round)
    key = self._signature(program, shared, lanes[0], features, rngs[0])
    compiled = self._rounds_program(key, program, shared_of, server_update, state, lanes[0], features, rngs)
    state, rngs = replicated_arguments((state, rngs), self.mesh)
    with allow_transfers():  # the stacked host inputs, as ``CompiledRounds.run``'s
      state, (aggregates, metrics, nonfinite) = compiled(state, self._device_features(features), data, rngs)
    self.stats.chunks += len(cohorts)
    self.stats.computed_example_steps += sum(x.mask.size for x in lanes)
    return RoundsResult(state, aggregates, metrics, nonfinite, lanes)

  def _rounds_program(self, key, program, shared_of, server_update, state, lanes, features, rngs):
    """The R-round program for this shape, compiled once per (shape, R, server update)."""
    num_rounds = int(rngs.shape[0])
    cache_key = (key, num_rounds, server_update, shared_of)
    if cache_key in self._rounds_programs:
      return self._rounds_programs[cache_key]
    with self._lock:
      chosen = self._programs.get(key)
    # The strategy the single-round program of this shape runs (timed, explicit or a timed
    # sibling's), else what its memory probe would compile.
    strategy = chosen.strategy if chosen is not None else self._probe_strategy(program, lanes, features)
    step = self.step_function(strategy, program, lanes, features)
    _, _, device_features, _ = self.abstract_inputs(program, shared_of(state), features, rngs[0])
    by_round = NamedSharding(self.mesh, P(None, CLIENTS))
    one = self._put_sharded(lanes, features, abstract=True)
    data = jax.tree.map(lambda s: jax.ShapeDtypeStruct((num_rounds,) + s.shape, s.dtype, sharding=by_round), one)
    abstract_state, abstract_rngs = replicated_specs((state, rngs), self.mesh)

    def rounds(state, device_features, data, rngs):
      def body(state, xs):
        round_data, rng = xs
        shared = shared_of(state)
        aggregate, metrics, nonfinite = step(
          zero_aggregate(program, shared, rng), shared, device_features, round_data, rng
        )
        return server_update(state, aggregate), (aggregate, metrics, nonfinite)

      return jax.lax.scan(body, state, (data, rngs))

    with strategy.trace_context():
      compiled = jax.jit(rounds).trace(abstract_state, device_features, data, abstract_rngs).lower().compile()
    self.stats.compiles += 1
    self._rounds_programs[cache_key] = compiled
    return compiled


def _layout(lanes: HostLanes) -> tuple:
  return tuple(None if x is None else (x.shape, x.dtype) for x in lanes)
