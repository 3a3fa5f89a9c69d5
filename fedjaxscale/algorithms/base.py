"""What every algorithm returns, and the round driver they share.

An algorithm is a factory that closes over its hyperparameters and returns
``Algorithm(init, apply)``; ``apply`` maps the algorithm's per-client update over the cohort with
the engine, then runs its server update once on the weighted mean of the client updates.
"""

from collections.abc import Callable, Mapping, Sequence
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax

from fedjaxscale.core.cohort import Cohort
from fedjaxscale.core.deferred import Deferred
from fedjaxscale.core.tree import tree_where
from fedjaxscale.core.types import Params, PRNGKey
from fedjaxscale.engine.executor import Aggregate, ClientProgram, Engine


class ServerState(NamedTuple):
  """The server's state: ``params`` is the global model.

  Attributes:
    params: the global model.
    opt_state: the server optimizer's state.
    round: int32 scalar, rounds applied so far.
  """

  params: Params
  opt_state: optax.OptState
  round: jax.Array


class Shared(NamedTuple):
  """What the server broadcasts to every client of a round."""

  params: Params
  round: jax.Array


class Algorithm(NamedTuple):
  """A federated algorithm as pure functions.

  Attributes:
    init: ``params -> ServerState``.
    apply: ``(server_state, cohort, rng) -> (server_state, diagnostics)``.
    apply_rounds: ``(server_state, cohorts, rngs) -> (server_state, [diagnostics])``: a round per
      cohort, as that many ``apply`` calls, compiled into one program where the cohorts share a
      shape (``engine/rounds.py``); None where an algorithm does not offer it.
    client_program: the clients' local work, which the engine maps over a cohort.
    server_update: ``(server_state, Aggregate) -> server_state`` (jitted).
    engine: the engine ``apply`` runs the cohort on.
  """

  init: Callable[[Params], ServerState]
  apply: Callable[[ServerState, Cohort, PRNGKey], tuple[ServerState, Mapping[str, Any]]]
  client_program: ClientProgram
  server_update: Callable[[ServerState, Aggregate], ServerState]
  engine: Engine
  apply_rounds: Callable[..., tuple[ServerState, list[Mapping[str, Any]]]] | None = None


def diagnostics_of(engine: Engine, before: dict, cohort: Cohort, aggregate: Aggregate, per_client: Mapping) -> Deferred:
  """The round's diagnostics as every algorithm's ``apply`` reports them (stateful ones too).

  A ``Deferred`` mapping: nothing is fetched from the devices until it is read, so ``apply``
  returns while the round still runs.
  """
  return round_diagnostics(
    cohort,
    per_client,
    lambda: jax.device_get((aggregate.weight_sum, aggregate.num_nonfinite)),
    engine.stats.computed_example_steps - before["computed"],
    engine.stats.real_example_steps - before["real"],
  )


def round_diagnostics(cohort: Cohort, per_client: Mapping, totals: Callable, computed: int, real: int) -> Deferred:
  """`diagnostics_of` from its parts: ``totals()`` fetches the round's weight sum and non-finite
  count; ``computed`` and ``real`` are its example slots (``apply_rounds`` gives each round's)."""

  def compute():
    weight_sum, num_nonfinite = totals()
    diagnostics = {
      "num_clients": cohort.num_clients,
      "num_nonfinite": int(num_nonfinite),
      "weight_sum": float(weight_sum),
      "padding_efficiency": real / computed if computed else 1.0,
      **{f"client_{k}": v for k, v in per_client.items()},
    }
    if "loss" in per_client and "examples_trained" in per_client:
      ok = ~per_client["nonfinite"]
      trained = per_client["examples_trained"][ok]
      diagnostics["train_loss"] = float(np.sum(per_client["loss"][ok] * trained) / max(trained.sum(), 1))
    return diagnostics

  return Deferred(compute)


def build_algorithm(
  client_program: ClientProgram, server_optimizer: optax.GradientTransformation, engine: Engine | None = None
) -> Algorithm:
  """Assembles ``Algorithm`` from the clients' local work and a server optimizer.

  The server treats the weighted mean client update as a (pseudo-)gradient and takes one
  ``server_optimizer`` step with it. A round where no client update is usable (all non-finite,
  or all weights zero) leaves the parameters and optimizer state unchanged.
  """
  engine = engine if engine is not None else Engine()

  def init(params: Params) -> ServerState:
    params = jax.tree.map(jnp.asarray, params)
    state = ServerState(params, server_optimizer.init(params), jnp.zeros((), jnp.int32))
    # Place the state where every later round's state lives (replicated over the engine's mesh),
    # so the server update compiles once, not once for the first round and again after.
    return engine.place_replicated(state)

  @jax.jit
  def server_update(state: ServerState, aggregate: Aggregate) -> ServerState:
    usable = aggregate.weight_sum > 0
    denom = jnp.where(usable, aggregate.weight_sum, 1.0)
    pseudo_grad = jax.tree.map(lambda s: s / denom.astype(s.dtype), aggregate.update_sum)
    updates, opt_state = server_optimizer.update(pseudo_grad, state.opt_state, state.params)
    params = optax.apply_updates(state.params, updates)
    return ServerState(
      tree_where(usable, params, state.params), tree_where(usable, opt_state, state.opt_state), state.round + 1
    )

  def apply(state: ServerState, cohort: Cohort, rng: PRNGKey) -> tuple[ServerState, Mapping[str, Any]]:
    before = dict(computed=engine.stats.computed_example_steps, real=engine.stats.real_example_steps)
    aggregate, per_client = engine.run(client_program, Shared(state.params, state.round), cohort, rng)
    new_state = server_update(state, aggregate)
    diagnostics = diagnostics_of(engine, before, cohort, aggregate, per_client)
    return new_state, diagnostics

  def shared_of(state: ServerState) -> Shared:
    return Shared(state.params, state.round)

  def apply_rounds(state: ServerState, cohorts: Sequence[Cohort], rngs) -> tuple[ServerState, list[Mapping[str, Any]]]:
    """``len(cohorts)`` rounds, the r-th training ``cohorts[r]`` with key ``rngs[r]``: the same as
    calling ``apply`` on each in turn (to float rounding), as one compiled ``lax.scan`` over the
    rounds when the cohorts share one shape and fit one chunk (else one ``apply`` a round)."""
    cohorts = list(cohorts)
    run = engine.run_rounds(client_program, shared_of, server_update, state, cohorts, rngs)
    if run is None:
      diagnostics = []
      for cohort, rng in zip(cohorts, rngs, strict=True):
        state, d = apply(state, cohort, rng)
        diagnostics.append(d)
      return state, diagnostics
    state, aggregates, per_clients, computed = run
    fetched = Deferred(lambda: {"all": jax.device_get((aggregates.weight_sum, aggregates.num_nonfinite))})

    def totals(r):  # one fetch for every round's weight sum and non-finite count
      return lambda: tuple(x[r] for x in fetched["all"])

    diagnostics = [
      round_diagnostics(cohort, per_client, totals(r), computed[r], cohort.real_example_steps)
      for r, (cohort, per_client) in enumerate(zip(cohorts, per_clients))
    ]
    return state, diagnostics

  return Algorithm(init, apply, client_program, server_update, engine, apply_rounds)
