"""What every algorithm returns, and the round driver they share.

An algorithm is a factory that closes over its hyperparameters and returns
``Algorithm(init, apply)``; ``apply`` maps the algorithm's per-client update over the cohort with
the engine, then runs its server update once on the weighted mean of the client updates.
"""

from collections.abc import Callable, Mapping
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
    client_program: the clients' local work, which the engine maps over a cohort.
    server_update: ``(server_state, Aggregate) -> server_state`` (jitted).
    engine: the engine ``apply`` runs the cohort on.
  """

  init: Callable[[Params], ServerState]
  apply: Callable[[ServerState, Cohort, PRNGKey], tuple[ServerState, Mapping[str, Any]]]
  client_program: ClientProgram
  server_update: Callable[[ServerState, Aggregate], ServerState]
  engine: Engine


def diagnostics_of(engine: Engine, before: dict, cohort: Cohort, aggregate: Aggregate, per_client: Mapping) -> Deferred:
  """The round's diagnostics as every algorithm's ``apply`` reports them (stateful ones too).

  A ``Deferred`` mapping: nothing is fetched from the devices until it is read, so ``apply``
  returns while the round still runs.
  """
  computed = engine.stats.computed_example_steps - before["computed"]
  real = engine.stats.real_example_steps - before["real"]

  def compute():
    weight_sum, num_nonfinite = jax.device_get((aggregate.weight_sum, aggregate.num_nonfinite))
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

  return Algorithm(init, apply, client_program, server_update, engine)
