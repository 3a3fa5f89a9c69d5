"""Federated Averaging.

Communication-Efficient Learning of Deep Networks from Decentralized Data.
H. Brendan McMahan, Eider Moore, Daniel Ramage, Seth Hampson, Blaise Agüera y Arcas. AISTATS 2017.
arXiv:1602.05629.

Each round, every client k starts from the global model x, runs its local steps with the client
optimizer and returns Delta_k = x - x_k. The server forms the weighted mean
Delta = sum_k w_k Delta_k / sum_k w_k (w_k = n_k, the client's number of examples, or 1) and takes
one step of the server optimizer with Delta as the gradient. With ``optax.sgd(1.0)`` on the
server this is plain model averaging: x <- sum_k w_k x_k / sum_k w_k.
"""

from collections.abc import Callable
from typing import NamedTuple

import jax
import jax.numpy as jnp
import optax

from fedjaxscale.algorithms.base import Algorithm, Shared, build_algorithm
from fedjaxscale.core.tree import tree_sq_norm, tree_sub, tree_where
from fedjaxscale.core.types import Params
from fedjaxscale.engine.executor import ClientOutput, ClientProgram, Engine
from fedjaxscale.models.model import Model

WEIGHTINGS = ("num_examples", "uniform")


class LocalState(NamedTuple):
  """A client's state during local training."""

  params: Params
  opt_state: optax.OptState
  loss_sum: jax.Array
  loss_sq_sum: jax.Array
  examples: jax.Array
  steps: jax.Array


def local_training(
  model: Model,
  client_optimizer: optax.GradientTransformation,
  *,
  proximal_mu: float = 0.0,
  weighting: str = "num_examples",
  client_lr_schedule: Callable[[jax.Array], jax.Array] | None = None,
) -> ClientProgram:
  """The per-client update of FedAvg and its relatives.

  Runs one optimizer step per cohort step (a ``lax.scan``); a step whose batch holds no real
  example leaves parameters and optimizer state untouched, which is how shorter local work
  (ragged epochs, stragglers' partial work) is expressed.

  Args:
    model: the model.
    client_optimizer: optax transformation, re-initialised at the start of every round.
    proximal_mu: adds ``mu / 2 * ||w - x||^2`` to the local loss (FedProx); 0 for FedAvg. May be
      a traced array (a stacked sweep's per-point mu); the term is then always added.
    weighting: ``'num_examples'`` (w_k = n_k) or ``'uniform'`` (w_k = 1).
    client_lr_schedule: optional ``round -> scale`` (e.g. an optax schedule); the client's update
      at round r is multiplied by it, so a schedule can decay the client learning rate over
      rounds although the optimizer restarts every round.

  Returns:
    A ``ClientProgram`` whose ``finish`` reports the delta ``x - x_k`` and metrics ``loss`` (mean per-example
    training loss over the local steps), ``loss_sq`` (mean squared per-example loss, Oort's
    statistical utility input), ``examples_trained`` and ``steps``.
  """
  if weighting not in WEIGHTINGS:
    raise ValueError(f"unknown weighting {weighting!r}; expected one of {WEIGHTINGS}")
  static_mu = isinstance(proximal_mu, (int, float))
  if static_mu and proximal_mu < 0:
    raise ValueError(f"proximal_mu must be >= 0, got {proximal_mu}")

  def optimizer_at(round_):
    if client_lr_schedule is None:
      return client_optimizer
    return optax.chain(client_optimizer, optax.scale(client_lr_schedule(round_)))

  def init(shared: Shared, rng: jax.Array) -> LocalState:
    del rng
    zero = jnp.zeros((), jnp.float32)
    return LocalState(shared.params, optimizer_at(shared.round).init(shared.params), zero, zero, zero, zero)

  def loss_fn(params, global_params, batch, mask, key):
    loss, per_example = model.loss(params, batch, mask, key)
    if not static_mu or proximal_mu:
      loss = loss + 0.5 * proximal_mu * tree_sq_norm(tree_sub(params, global_params))
    return loss, per_example

  def step(shared: Shared, state: LocalState, batch, mask, rng: jax.Array) -> LocalState:
    (_, per_example), grads = jax.value_and_grad(loss_fn, has_aux=True)(state.params, shared.params, batch, mask, rng)
    updates, opt_state = optimizer_at(shared.round).update(grads, state.opt_state, state.params)
    params = optax.apply_updates(state.params, updates)
    real = jnp.any(mask)
    return LocalState(
      params=tree_where(real, params, state.params),
      opt_state=tree_where(real, opt_state, state.opt_state),
      loss_sum=state.loss_sum + per_example.sum(),
      loss_sq_sum=state.loss_sq_sum + jnp.square(per_example).sum(),
      examples=state.examples + mask.sum().astype(jnp.float32),
      steps=state.steps + real.astype(jnp.float32),
    )

  def finish(shared: Shared, state: LocalState, num_examples: jax.Array) -> ClientOutput:
    n = jnp.maximum(state.examples, 1.0)
    metrics = {
      "loss": state.loss_sum / n,
      "loss_sq": state.loss_sq_sum / n,
      "examples_trained": state.examples,
      "steps": state.steps,
    }
    if weighting == "num_examples":
      weight = num_examples.astype(jnp.float32)
    else:
      weight = (num_examples > 0).astype(jnp.float32)
    return ClientOutput(tree_sub(shared.params, state.params), weight, metrics)

  return ClientProgram(init, step, finish)


def fedavg(
  model: Model,
  client_optimizer: optax.GradientTransformation,
  server_optimizer: optax.GradientTransformation | None = None,
  *,
  weighting: str = "num_examples",
  client_lr_schedule: Callable[[jax.Array], jax.Array] | None = None,
  engine: Engine | None = None,
) -> Algorithm:
  """Federated Averaging (McMahan et al. 2017).

  Args:
    model: the model trained.
    client_optimizer: e.g. ``optax.sgd(0.05)``.
    server_optimizer: applied to the weighted mean delta; default ``optax.sgd(1.0)`` (averaging).
    weighting: ``'num_examples'`` (default, as the paper) or ``'uniform'`` (FedScale's mean).
    client_lr_schedule: optional ``round -> multiplier`` of the client's steps.
    engine: where cohorts run; default ``Engine()`` (``vmap`` over every device).

  Returns:
    ``Algorithm(init, apply, ...)``.

  Example::

    algorithm = fedavg(models.logistic_regression(60, 10), optax.sgd(0.1))
    state = algorithm.init(model.init(jax.random.key(0)))
    state, diagnostics = algorithm.apply(state, cohort, jax.random.key(1))
  """
  program = local_training(model, client_optimizer, weighting=weighting, client_lr_schedule=client_lr_schedule)
  return build_algorithm(program, server_optimizer or optax.sgd(1.0), engine)
