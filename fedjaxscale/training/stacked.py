"""Many hyperparameter points as one program: an algorithm whose parameters carry a leading [H] axis.

A sweep over training hyperparameters only (client and server learning rates, the adaptive
servers' betas and tau) shares everything the scheduler decides: the same clients, the same
cohorts, the same keys. ``stacked_algorithm`` builds, on the engine's public interface, one
``Algorithm`` whose ``ClientProgram`` ``jax.vmap``s each point's own program over H with that
point's hyperparameters as traced arrays (the point's optax optimizers are built inside the
vmapped function), and whose server update vmaps the point's server update. The engine sees one
program with bigger parameters: one scheduler, one cohort gather, H models.

Differences from H separate runs, all documented where they arise:

- A client whose update is non-finite in ANY point is left out of EVERY point's aggregate (the
  engine checks the whole stacked update). Separate runs would drop it only where it diverged.
- The aggregation weight is the point-0 weight (identical across points: it depends on the
  client's examples only).
- The selection policy is fed point 0's losses; only the uniform policy (which ignores them) is
  therefore allowed in a stacked group (`VMAPPABLE` and `can_stack`).
"""

from __future__ import annotations

import types
from collections.abc import Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from fedjaxscale.algorithms import Algorithm, ServerState, Shared
from fedjaxscale.engine import Aggregate, ClientOutput, ClientProgram, Engine

# Config fields a stacked group may differ in: each enters the algorithm only as a number in
# arithmetic (optax learning rates, the FedOpt moments), so it can be a traced array.
VMAPPABLE = (
  "algorithm.client_lr",
  "algorithm.server_lr",
  "algorithm.beta1",
  "algorithm.beta2",
  "algorithm.tau",
)


def can_stack(config) -> bool:
  """Whether a config's run can share its plan with others that differ only in `VMAPPABLE`.

  DP, update encoders and secure aggregation wrap the algorithm (``algorithms.dp``), which the
  stacked algorithm does not: such points run one at a time."""
  wrapped = config.privacy.enabled or config.compression.encoder != "none" or config.secagg.enabled
  return config.system.mode == "sync" and config.system.selection == "random" and not wrapped


def stacked_algorithm(config, hyper: dict[str, Sequence[float]], model, engine: Engine, build) -> Algorithm:
  """One algorithm training ``H`` points at once.

  Args:
    config: the group's shared config (its `VMAPPABLE` fields are overridden per point).
    hyper: ``field -> [H] values`` for the fields that differ (a subset of `VMAPPABLE`).
    model: the model.
    engine: the engine the cohort runs on.
    build: ``(config_like, model, engine) -> Algorithm`` (``training.setup.build_algorithm``);
      called with per-point values that may be tracers.

  Returns:
    ``Algorithm`` whose state holds params and optimizer state stacked on a leading [H] axis
    (the round counter is shared); ``apply``'s diagnostics carry ``train_loss`` as an [H] array
    and per-client metrics as ``[clients, H]``.
  """
  names = sorted(hyper)
  unknown = [n for n in names if n not in VMAPPABLE]
  if unknown:
    raise ValueError(f"fields {unknown} cannot be stacked; stackable: {VMAPPABLE}")
  values = {n: np.asarray(hyper[n], np.float32) for n in names}
  sizes = {v.shape for v in values.values()}
  if len(sizes) != 1 or len(next(iter(sizes))) != 1:
    raise ValueError(f"every stacked field needs one [H] vector of values, got shapes {sizes}")
  num_points = next(iter(sizes))[0]
  base = config.algorithm.to_dict()

  def point(hp) -> Algorithm:
    algorithm = dict(base, **{n.split(".", 1)[1]: hp[n] for n in names})
    return build(types.SimpleNamespace(algorithm=types.SimpleNamespace(**algorithm)), model, engine)

  hps = {n: jnp.asarray(v) for n, v in values.items()}

  def init_program(shared: Shared, rng):
    def one(hp, params):
      return point(hp).client_program.init(Shared(params, shared.round), rng)

    return jax.vmap(one)(hps, shared.params)

  def step(shared: Shared, carry, batch, mask, rng):
    def one(hp, params, c):
      return point(hp).client_program.step(Shared(params, shared.round), c, batch, mask, rng)

    return jax.vmap(one)(hps, shared.params, carry)

  def finish(shared: Shared, carry, num_examples) -> ClientOutput:
    def one(hp, params, c):
      return point(hp).client_program.finish(Shared(params, shared.round), c, num_examples)

    out = jax.vmap(one)(hps, shared.params, carry)
    return ClientOutput(out.update, out.weight[0], out.metrics)

  program = ClientProgram(init_program, step, finish)

  @jax.jit
  def server_update(state: ServerState, aggregate: Aggregate) -> ServerState:
    def one(hp, params, opt_state, update):
      new = point(hp).server_update(
        ServerState(params, opt_state, state.round), Aggregate(update, aggregate.weight_sum, aggregate.num_nonfinite)
      )
      return new.params, new.opt_state

    params, opt_state = jax.vmap(one)(hps, state.params, state.opt_state, aggregate.update_sum)
    return ServerState(params, opt_state, state.round + 1)

  def init(params) -> ServerState:
    states = [point({n: float(v[h]) for n, v in values.items()}).init(params) for h in range(num_points)]
    host = jax.device_get(states)
    stacked = ServerState(
      jax.tree.map(lambda *xs: np.stack(xs), *[s.params for s in host]),
      jax.tree.map(lambda *xs: np.stack(xs), *[s.opt_state for s in host]),
      jnp.zeros((), jnp.int32),
    )
    return engine.place_replicated(stacked)

  def apply(state: ServerState, cohort, rng) -> tuple[ServerState, dict[str, Any]]:
    before = (engine.stats.computed_example_steps, engine.stats.real_example_steps)
    aggregate, per_client = engine.run(program, Shared(state.params, state.round), cohort, rng)
    new_state = server_update(state, aggregate)
    weight_sum, num_nonfinite = jax.device_get((aggregate.weight_sum, aggregate.num_nonfinite))
    computed = engine.stats.computed_example_steps - before[0]
    real = engine.stats.real_example_steps - before[1]
    ok = ~per_client["nonfinite"]
    trained = per_client["examples_trained"][ok]
    diagnostics = {
      "num_clients": cohort.num_clients,
      "num_nonfinite": int(num_nonfinite),
      "weight_sum": float(weight_sum),
      "padding_efficiency": real / computed if computed else 1.0,
      **{f"client_{k}": v for k, v in per_client.items()},
      "train_loss": np.sum(per_client["loss"][ok] * trained, axis=0) / np.maximum(trained.sum(axis=0), 1),
    }
    return new_state, diagnostics

  return Algorithm(init, apply, program, server_update, engine)


def point_state(state: ServerState, h: int) -> ServerState:
  """Point ``h``'s own server state (host arrays), as a run of that point alone holds it."""
  host = jax.device_get(state)
  return ServerState(
    jax.tree.map(lambda x: x[h], host.params), jax.tree.map(lambda x: x[h], host.opt_state), host.round
  )


def stack_states(states: Sequence[ServerState]) -> ServerState:
  """The inverse of `point_state` over every point (host arrays)."""
  host = jax.device_get(list(states))
  return ServerState(
    jax.tree.map(lambda *xs: np.stack(xs), *[s.params for s in host]),
    jax.tree.map(lambda *xs: np.stack(xs), *[s.opt_state for s in host]),
    jnp.asarray(host[0].round),
  )
