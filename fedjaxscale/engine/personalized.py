"""Evaluating personalized models: each client tested with its own parameters.

Two sources of per-client parameters:

* stored personal models (Ditto's, from the client-state store), passed as host arrays
  ``[clients, ...]``;
* local adaptation (FedAvg with fine-tuning): the global model trained for a few local steps on
  the client's training data (``adapt``), run through the engine's state path: a program whose
  "state" is the adapted model, started fresh from the global one, so the engine returns every
  client's adapted parameters.

``evaluate_per_client`` then runs each client's test examples through its own model: clients are
taken in groups of ``clients_per_call``, each client's examples padded to the group's bucketed
size, and ``vmap`` over the group evaluates them with their own parameters. The result is an
``EvalResult`` like the global model's, so its weighted accuracy and p10/p50/p90 are reported
side by side with it.
"""

from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax

from fedjaxscale.core.buckets import bucket_size
from fedjaxscale.core.cohort import Cohort
from fedjaxscale.core.tree import tree_where
from fedjaxscale.core.types import Params, PRNGKey
from fedjaxscale.engine.evaluation import EvalResult
from fedjaxscale.engine.executor import ClientOutput, Engine
from fedjaxscale.engine.state import StatefulProgram, run_stateful, stack_states, state_spec
from fedjaxscale.models.model import Model


class _Adapting(NamedTuple):
  params: Params
  opt_state: optax.OptState


def adaptation_program(model: Model, optimizer: optax.GradientTransformation) -> StatefulProgram:
  """Fine-tunes the received model on the client's batches; the adapted model is the new "state"."""

  def state_init(shared):
    return shared

  def init(shared, rng, params):
    del rng
    return _Adapting(params, optimizer.init(params))

  def step(shared, carry, batch, mask, rng):
    grads, _ = jax.grad(model.loss, has_aux=True)(carry.params, batch, mask, rng)
    updates, opt_state = optimizer.update(grads, carry.opt_state, carry.params)
    real = jnp.any(mask)
    return _Adapting(
      tree_where(real, optax.apply_updates(carry.params, updates), carry.params),
      tree_where(real, opt_state, carry.opt_state),
    )

  def finish(shared, carry, num_examples):
    zero = jax.tree.map(lambda x: jnp.zeros((), x.dtype), shared)
    return ClientOutput(zero, (num_examples > 0).astype(jnp.float32), {}), carry.params

  return StatefulProgram(init, step, finish, state_init)


def adapt(engine: Engine, program: StatefulProgram, params: Params, cohort: Cohort, rng: PRNGKey):
  """Every cohort client's fine-tuned copy of ``params``: host arrays ``[clients, ...]``."""
  spec = state_spec(program, params)
  states = stack_states(spec, cohort.num_clients)
  result = run_stateful(engine, program, params, cohort, rng, states, np.ones(cohort.num_clients, bool))
  return result.states


def evaluate_per_client(
  model: Model, params: Params, dataset, clients: np.ndarray, clients_per_call: int = 64
) -> EvalResult:
  """Evaluates client ``clients[i]`` of ``dataset`` with ``params[i]`` (host arrays ``[clients, ...]``).

  Runs on the default device (per-client models do not share one set of replicated
  parameters; sharding the groups over the mesh is left for when evaluation is the bottleneck).
  """
  clients = np.asarray(clients, np.int64)
  rows, sizes = dataset.client_rows(clients)
  offsets = np.concatenate([[0], np.cumsum(sizes)])
  names = ["count", "loss"] + list(model.metrics)
  totals = {k: np.zeros(len(clients)) for k in names}
  evaluate = _program(model)
  for first in range(0, len(clients), clients_per_call):
    group = np.arange(first, min(first + clients_per_call, len(clients)))
    width = bucket_size(max(1, int(sizes[group].max())))
    lanes = bucket_size(len(group))
    index = np.zeros((lanes, width), np.int64)
    mask = np.zeros((lanes, width), bool)
    for j, g in enumerate(group):
      n = int(sizes[g])
      index[j, :n] = rows[offsets[g] : offsets[g] + n]
      mask[j, :n] = True
    index[~mask] = rows[0] if len(rows) else 0
    batch = {
      name: np.asarray(x[index.reshape(-1)]).reshape(index.shape + x.shape[1:]) for name, x in dataset.features.items()
    }
    take = np.pad(group, (0, lanes - len(group)), mode="edge")
    group_params = jax.tree.map(lambda x, take=take: np.asarray(x)[take], params)
    with jax.transfer_guard_host_to_device("allow"):
      out = jax.device_get(evaluate(group_params, batch, mask))
    for k in names:
      totals[k][group] = np.asarray(out[k], np.float64)[: len(group)]
  count = totals["count"]
  per_client = {"count": count}
  metrics = {}
  for k in names[1:]:
    per_client[k] = totals[k] / np.maximum(count, 1.0)
    metrics[k] = float(totals[k].sum() / max(count.sum(), 1.0))
  metrics["num_examples"] = float(count.sum())
  return EvalResult(metrics, per_client, np.asarray(dataset.client_ids)[clients])


_PROGRAMS: dict[int, tuple[Model, object]] = {}


def _program(model: Model):
  """One jitted evaluator per model (kept, so later evaluations do not retrace)."""
  if id(model) not in _PROGRAMS or _PROGRAMS[id(model)][0] is not model:

    @jax.jit
    def evaluate(params, batch, mask):
      return jax.vmap(model.evaluate)(params, batch, mask)

    _PROGRAMS[id(model)] = (model, evaluate)
  return _PROGRAMS[id(model)][1]
