"""Algorithms whose clients keep a state between rounds (SCAFFOLD, Ditto).

A stateful algorithm is ``StatefulAlgorithm(init, apply, ...)`` with

    apply(server_state, cohort, rng, client_states, fresh) -> (server_state, diagnostics, new)

where ``client_states`` are the cohort's stored states (host arrays ``[clients, ...]`` in cohort
order, e.g. from ``fedjaxscale.state.ClientStateStore.gather``), ``fresh`` flags the clients that
have none yet, and ``new`` (``engine.state.StatefulResult``) holds the new states and which of them
to store (``new.states``, ``new.written``). The algorithm stays pure: the store lives outside it.
"""

from collections.abc import Callable
from typing import Any, NamedTuple

import numpy as np

from fedjaxscale.algorithms.base import diagnostics_of
from fedjaxscale.core.cohort import Cohort
from fedjaxscale.core.types import Params, PRNGKey, PyTree
from fedjaxscale.engine.executor import Aggregate, Engine
from fedjaxscale.engine.state import StatefulProgram, StatefulResult, run_stateful, state_spec


class StatefulAlgorithm(NamedTuple):
  """A federated algorithm with per-client state, as pure functions.

  Attributes:
    init: ``params -> server_state``.
    apply: ``(server_state, cohort, rng, client_states, fresh) -> (server_state, diagnostics,
      StatefulResult)``.
    client_program: the clients' local work (a ``StatefulProgram``).
    server_update: ``(server_state, Aggregate) -> server_state`` (jitted).
    engine: the engine ``apply`` runs the cohort on.
    shared: ``server_state -> shared``, what the server broadcasts to the clients.
    state_spec: ``server_state -> pytree of ShapeDtypeStruct``, one client's declared state.
  """

  init: Callable[[Params], Any]
  apply: Callable[..., tuple[Any, dict[str, Any], StatefulResult]]
  client_program: StatefulProgram
  server_update: Callable[[Any, Aggregate], Any]
  engine: Engine
  shared: Callable[[Any], Any]
  state_spec: Callable[[Any], PyTree]


def build_stateful_algorithm(
  client_program: StatefulProgram,
  init: Callable[[Params], Any],
  server_update: Callable[[Any, Aggregate], Any],
  shared: Callable[[Any], Any],
  engine: Engine,
) -> StatefulAlgorithm:
  """Assembles a ``StatefulAlgorithm``; ``server_update`` should be jitted by the caller."""

  def apply(server_state, cohort: Cohort, rng: PRNGKey, client_states: PyTree, fresh: np.ndarray):
    before = dict(computed=engine.stats.computed_example_steps, real=engine.stats.real_example_steps)
    result = run_stateful(engine, client_program, shared(server_state), cohort, rng, client_states, fresh)
    new_state = server_update(server_state, result.aggregate)
    return new_state, diagnostics_of(engine, before, cohort, result.aggregate, result.per_client), result

  def spec(server_state):
    return state_spec(client_program, shared(server_state))

  return StatefulAlgorithm(init, apply, client_program, server_update, engine, shared, spec)
