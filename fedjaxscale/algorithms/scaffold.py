"""SCAFFOLD: stochastic controlled averaging.

SCAFFOLD: Stochastic Controlled Averaging for Federated Learning.
Sai Praneeth Karimireddy, Satyen Kale, Mehryar Mohri, Sashank J. Reddi, Sebastian U. Stich,
Ananda Theertha Suresh. ICML 2020. arXiv:1910.06378.

Algorithm 1 with option II. Client i starts from the global model x with its control variate c_i
(zero before its first round) and the server's c, and runs its K_i local steps

    y <- y - eta_l (g_i(y) - c_i + c)

then sets c_i+ = c_i - c + (x - y) / (K_i eta_l) and returns (Delta y_i, Delta c_i) =
(y - x, c_i+ - c_i). K_i is the client's own number of steps that held examples, so ragged local
work and a straggler's partial work use their own K; a client with no step keeps c_i. The server
applies x <- x + eta_g mean_S(Delta y) (here: ``server_lr`` times the mean of x - y as the
pseudo-gradient of ``optax.sgd``) and c <- c + |S| / N mean_S(Delta c) = c + sum_S(Delta c) / N.

The mean of Delta y is weighted like FedAvg's (``weighting``); the mean of Delta c is the paper's
plain mean over the clients that count (non-finite clients are left out of both).
"""

from typing import NamedTuple

import jax
import jax.numpy as jnp
import optax

from fedjaxscale.algorithms.stateful import StatefulAlgorithm, build_stateful_algorithm
from fedjaxscale.core.tree import tree_sub, tree_where
from fedjaxscale.core.types import Params
from fedjaxscale.engine.executor import Aggregate, ClientOutput, Engine
from fedjaxscale.engine.state import StatefulProgram
from fedjaxscale.models.model import Model

WEIGHTINGS = ("num_examples", "uniform")


class ScaffoldState(NamedTuple):
  """The server's state.

  Attributes:
    params: the global model x.
    opt_state: the server optimizer's state.
    round: int32 scalar, rounds applied so far.
    control: the server control variate c (shaped like ``params``).
  """

  params: Params
  opt_state: optax.OptState
  round: jax.Array
  control: Params


class ScaffoldShared(NamedTuple):
  """What the server broadcasts: x, the round and c."""

  params: Params
  round: jax.Array
  control: Params


class _Carry(NamedTuple):
  params: Params
  control: Params  # the client's c_i (unchanged during local steps)
  loss_sum: jax.Array
  loss_sq_sum: jax.Array
  examples: jax.Array
  steps: jax.Array


class ScaffoldUpdate(NamedTuple):
  """A client's aggregated update: x - y, Delta c_i / w_i, and 1 / w_i (so the sums give
  sum_S w (x - y), sum_S Delta c and |S|)."""

  delta: Params
  control_delta: Params
  count: jax.Array


def scaffold_program(model: Model, client_lr: float, *, weighting: str = "num_examples") -> StatefulProgram:
  """SCAFFOLD's client work (plain SGD with the control-variate correction)."""
  if weighting not in WEIGHTINGS:
    raise ValueError(f"unknown weighting {weighting!r}; expected one of {WEIGHTINGS}")
  if client_lr <= 0:
    raise ValueError(f"client_lr must be > 0, got {client_lr}")

  def state_init(shared: ScaffoldShared) -> Params:
    return jax.tree.map(jnp.zeros_like, shared.params)

  def init(shared: ScaffoldShared, rng, control: Params) -> _Carry:
    del rng
    zero = jnp.zeros((), jnp.float32)
    return _Carry(shared.params, control, zero, zero, zero, zero)

  def step(shared: ScaffoldShared, carry: _Carry, batch, mask, rng) -> _Carry:
    (_, per_example), grads = jax.value_and_grad(model.loss, has_aux=True)(carry.params, batch, mask, rng)
    params = jax.tree.map(
      lambda y, g, ci, c: y - client_lr * (g - ci + c), carry.params, grads, carry.control, shared.control
    )
    real = jnp.any(mask)
    return _Carry(
      tree_where(real, params, carry.params),
      carry.control,
      carry.loss_sum + per_example.sum(),
      carry.loss_sq_sum + jnp.square(per_example).sum(),
      carry.examples + mask.sum().astype(jnp.float32),
      carry.steps + real.astype(jnp.float32),
    )

  def finish(shared: ScaffoldShared, carry: _Carry, num_examples):
    delta = tree_sub(shared.params, carry.params)  # x - y
    worked = carry.steps > 0
    scale = 1.0 / (jnp.maximum(carry.steps, 1.0) * client_lr)
    new_control = jax.tree.map(
      lambda ci, c, d: ci - c + d * scale.astype(d.dtype), carry.control, shared.control, delta
    )
    new_control = tree_where(worked, new_control, carry.control)
    if weighting == "num_examples":
      weight = num_examples.astype(jnp.float32)
    else:
      weight = (num_examples > 0).astype(jnp.float32)
    inv = jnp.where(weight > 0, 1.0 / jnp.where(weight > 0, weight, 1.0), 0.0)
    control_delta = jax.tree.map(lambda n, o: (n - o) * inv.astype(n.dtype), new_control, carry.control)
    n = jnp.maximum(carry.examples, 1.0)
    metrics = {
      "loss": carry.loss_sum / n,
      "loss_sq": carry.loss_sq_sum / n,
      "examples_trained": carry.examples,
      "steps": carry.steps,
    }
    return ClientOutput(ScaffoldUpdate(delta, control_delta, inv), weight, metrics), new_control

  return StatefulProgram(init, step, finish, state_init)


def scaffold(
  model: Model,
  client_lr: float,
  server_lr: float = 1.0,
  *,
  num_clients: int,
  weighting: str = "num_examples",
  engine: Engine | None = None,
) -> StatefulAlgorithm:
  """SCAFFOLD (Karimireddy et al. 2020), Algorithm 1 option II.

  Args:
    model: the model trained.
    client_lr: eta_l, the clients' SGD step size.
    server_lr: eta_g, the global step size (1.0: x <- x + mean(Delta y)).
    num_clients: N, the population size (the server's c moves by sum_S(Delta c) / N).
    weighting: how the mean of Delta y weighs clients: ``'num_examples'`` or ``'uniform'`` (the
      paper's).
    engine: where cohorts run; default ``Engine()``.

  Returns:
    ``StatefulAlgorithm``; the client state is c_i, shaped like the parameters.

  Example::

    alg = scaffold(model, client_lr=0.1, num_clients=dataset.num_clients)
    server = alg.init(model.init(jax.random.key(0)))
    states, fresh = store.gather(indices)
    server, diagnostics, new = alg.apply(server, cohort, jax.random.key(1), states, fresh)
    store.scatter(indices, new.states, new.written)
  """
  if num_clients < 1:
    raise ValueError(f"num_clients must be >= 1, got {num_clients}")
  engine = engine if engine is not None else Engine()
  program = scaffold_program(model, client_lr, weighting=weighting)
  server_optimizer = optax.sgd(server_lr)

  def init(params: Params) -> ScaffoldState:
    params = jax.tree.map(jnp.asarray, params)
    control = jax.tree.map(jnp.zeros_like, params)
    state = ScaffoldState(params, server_optimizer.init(params), jnp.zeros((), jnp.int32), control)
    return engine.place_replicated(state)

  @jax.jit
  def server_update(state: ScaffoldState, aggregate: Aggregate) -> ScaffoldState:
    usable = aggregate.weight_sum > 0
    denom = jnp.where(usable, aggregate.weight_sum, 1.0)
    pseudo_grad = jax.tree.map(lambda s: s / denom.astype(s.dtype), aggregate.update_sum.delta)
    updates, opt_state = server_optimizer.update(pseudo_grad, state.opt_state, state.params)
    params = optax.apply_updates(state.params, updates)
    control = jax.tree.map(lambda c, d: c + d / num_clients, state.control, aggregate.update_sum.control_delta)
    return ScaffoldState(
      tree_where(usable, params, state.params),
      tree_where(usable, opt_state, state.opt_state),
      state.round + 1,
      tree_where(usable, control, state.control),
    )

  def shared(state: ScaffoldState) -> ScaffoldShared:
    return ScaffoldShared(state.params, state.round, state.control)

  return build_stateful_algorithm(program, init, server_update, shared, engine)
