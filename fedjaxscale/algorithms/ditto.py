"""Ditto: fair and robust federated learning through personalization.

Ditto: Fair and Robust Federated Learning Through Personalization.
Tian Li, Shengyuan Hu, Ahmad Beirami, Virginia Smith. ICML 2021. arXiv:2012.04221.

The global model w is trained by FedAvg (any client and server optimizer). Each client k also
keeps a personal model v_k (its client state) and, on the same local batches as its FedAvg steps,
takes the proximal steps of Algorithm 1

    v_k <- v_k - eta_p (grad F_k(v_k) + lambda (v_k - w^t))

with w^t the global model the client received this round. A client selected for the first time
starts its personal model from that w^t (the paper starts every v_k from w^0; starting from the
current global model is the same for clients seen in round 0 and avoids personal models far
behind the global one for clients first seen late). Only w is aggregated.
"""

from typing import NamedTuple

import jax
import jax.numpy as jnp
import optax

from fedjaxscale.algorithms.base import ServerState, Shared
from fedjaxscale.algorithms.base import build_algorithm as _build_fedavg
from fedjaxscale.algorithms.fedavg import local_training
from fedjaxscale.algorithms.stateful import StatefulAlgorithm, build_stateful_algorithm
from fedjaxscale.core.tree import tree_sq_norm, tree_sub, tree_where
from fedjaxscale.core.types import Params
from fedjaxscale.engine.executor import Engine
from fedjaxscale.engine.state import StatefulProgram
from fedjaxscale.models.model import Model


class _Carry(NamedTuple):
  fedavg: object  # fedavg.LocalState
  personal: Params
  personal_opt: optax.OptState
  personal_loss_sum: jax.Array


def ditto_program(
  model: Model,
  client_optimizer: optax.GradientTransformation,
  personal_optimizer: optax.GradientTransformation,
  lam: float,
  *,
  weighting: str = "num_examples",
) -> StatefulProgram:
  """Ditto's client work: FedAvg's local steps plus the personal model's proximal steps."""
  if lam < 0:
    raise ValueError(f"lam must be >= 0, got {lam}")
  base = local_training(model, client_optimizer, weighting=weighting)

  def state_init(shared: Shared) -> Params:
    return shared.params

  def init(shared: Shared, rng, personal: Params) -> _Carry:
    return _Carry(base.init(shared, rng), personal, personal_optimizer.init(personal), jnp.zeros((), jnp.float32))

  def personal_loss(v, w, batch, mask, key):
    loss, per_example = model.loss(v, batch, mask, key)
    return loss + 0.5 * lam * tree_sq_norm(tree_sub(v, w)), per_example

  def step(shared: Shared, carry: _Carry, batch, mask, rng) -> _Carry:
    fedavg = base.step(shared, carry.fedavg, batch, mask, rng)
    key = jax.random.fold_in(rng, 1)
    (_, per_example), grads = jax.value_and_grad(personal_loss, has_aux=True)(
      carry.personal, shared.params, batch, mask, key
    )
    updates, opt_state = personal_optimizer.update(grads, carry.personal_opt, carry.personal)
    personal = optax.apply_updates(carry.personal, updates)
    real = jnp.any(mask)
    return _Carry(
      fedavg,
      tree_where(real, personal, carry.personal),
      tree_where(real, opt_state, carry.personal_opt),
      carry.personal_loss_sum + per_example.sum(),
    )

  def finish(shared: Shared, carry: _Carry, num_examples):
    out = base.finish(shared, carry.fedavg, num_examples)
    n = jnp.maximum(carry.fedavg.examples, 1.0)
    metrics = dict(out.metrics, personal_loss=carry.personal_loss_sum / n)
    return out._replace(metrics=metrics), carry.personal

  return StatefulProgram(init, step, finish, state_init)


def ditto(
  model: Model,
  client_optimizer: optax.GradientTransformation,
  personal_optimizer: optax.GradientTransformation | None = None,
  server_optimizer: optax.GradientTransformation | None = None,
  *,
  lam: float = 0.1,
  weighting: str = "num_examples",
  engine: Engine | None = None,
) -> StatefulAlgorithm:
  """Ditto (Li et al. 2021): FedAvg for the global model, a proximal personal model per client.

  Args:
    model: the model trained (global and personal models share it).
    client_optimizer: the FedAvg local optimizer, e.g. ``optax.sgd(0.05)``.
    personal_optimizer: the personal model's optimizer (default: ``client_optimizer``); it is
      re-initialised every round, like the client optimizer.
    server_optimizer: default ``optax.sgd(1.0)`` (averaging).
    lam: lambda, the weight of ``lambda / 2 ||v - w||^2`` (0: purely local personal models).
    weighting: FedAvg's weighting.
    engine: where cohorts run.

  Returns:
    ``StatefulAlgorithm`` with ``ServerState``; the client state is the personal model v_k.

  Example::

    alg = ditto(model, optax.sgd(0.05), lam=0.1)
    server = alg.init(model.init(jax.random.key(0)))
    server, diagnostics, new = alg.apply(server, cohort, key, *store.gather(indices))
  """
  engine = engine if engine is not None else Engine()
  program = ditto_program(model, client_optimizer, personal_optimizer or client_optimizer, lam, weighting=weighting)
  fedavg = _build_fedavg(
    local_training(model, client_optimizer, weighting=weighting), server_optimizer or optax.sgd(1.0), engine
  )

  def shared(state: ServerState) -> Shared:
    return Shared(state.params, state.round)

  return build_stateful_algorithm(program, fedavg.init, fedavg.server_update, shared, engine)
