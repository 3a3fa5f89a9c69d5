"""Many hyperparameter points as one program: an algorithm whose parameters carry a leading [H] axis.

A sweep over training hyperparameters only (client and server learning rates and momenta,
FedProx's mu, the adaptive servers' betas, tau and v_0) shares everything the scheduler decides: the same clients, the same
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

import json
import types
from collections.abc import Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from fedjaxscale.algorithms import Algorithm, ServerState, Shared
from fedjaxscale.engine import Aggregate, ClientOutput, ClientProgram, Engine
from fedjaxscale.training import client_states

# Config fields a stacked group may differ in: each enters the algorithm only as a number in
# arithmetic (optax learning rates and momenta, FedProx's proximal term, the FedOpt moments), so it
# can be a traced array. Not here: the client lr decay (optax's schedule branches on its rate) and
# its period, the weighting, the algorithm's name; those split a sweep into groups.
VMAPPABLE = (
  "algorithm.client_lr",
  "algorithm.client_momentum",
  "algorithm.client_lr_min",
  "algorithm.mu",
  "algorithm.server_lr",
  "algorithm.server_momentum",
  "algorithm.beta1",
  "algorithm.beta2",
  "algorithm.tau",
  "algorithm.initial_v",
)
# Of those, fields whose zero turns a feature off (no momentum: no optimizer state for it): points
# with a zero and points with a non-zero value have differently shaped states, so they never share
# a group.
ZERO_IS_OFF = ("algorithm.client_momentum", "algorithm.server_momentum")


def can_stack(config) -> bool:
  """Whether a config's run can share its plan with others that differ only in `VMAPPABLE`.

  Synchronous rounds with uniform selection (its choices ignore the points' losses), and none of
  what `stacked_run` does not carry: stateful algorithms (SCAFFOLD, Ditto), DP, update encoders,
  secure aggregation, per-client evaluation. Those points run one at a time.
  """
  return (
    config.system.mode == "sync"
    and config.system.selection == "random"
    and config.algorithm.name not in client_states.STATEFUL
    and not config.privacy.enabled
    and config.compression.encoder == "none"
    and not config.secagg.enabled
    and not config.eval_personal
  )


def group_key(config) -> str:
  """Equal for configs that can run as one stacked group (`can_stack` them first)."""
  flat = json.loads(config.to_json_best_effort())
  for field in VMAPPABLE:
    section, name = field.split(".")
    value = flat[section].pop(name, None)
    if field in ZERO_IS_OFF:
      flat[section][f"{name}__is_zero"] = value == 0
  return json.dumps(flat, sort_keys=True)


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
  unknown = [n for n in hyper if n not in VMAPPABLE]
  if unknown:
    raise ValueError(f"fields {unknown} cannot be stacked; stackable: {VMAPPABLE}")
  sizes = {np.shape(v) for v in hyper.values()}
  if len(sizes) != 1 or len(next(iter(sizes))) != 1:
    raise ValueError(f"every stacked field needs one [H] vector of values, got shapes {sizes}")
  num_points = next(iter(sizes))[0]
  # A field equal in every point stays a Python number (as in a run alone: a zero momentum then
  # means no momentum state); the others become traced [H] arrays.
  names = sorted(n for n in hyper if len({float(v) for v in hyper[n]}) > 1)
  off = [n for n in names if n in ZERO_IS_OFF and 0 in {float(v) for v in hyper[n]}]
  if off:
    raise ValueError(f"fields {off} are zero in some points only (different optimizer states): not one group")
  values = {n: np.asarray(hyper[n], np.float32) for n in names}
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
