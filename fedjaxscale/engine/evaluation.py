"""Federated evaluation: one model over many clients' examples, reduced per client on device.

Evaluation uses one set of parameters for everybody, so it needs no per-client padding: the
clients' examples are cut into flat batches of one bucketed size, sharded over the ``clients``
mesh axis, and each device sums per-example loss and metrics into per-client totals with
``segment_sum``; a ``psum`` joins the devices. The host receives a few numbers per client: the
example-weighted totals and the per-client distribution (FedScale's fairness view).
"""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

from fedjaxscale.core.buckets import bucket_size
from fedjaxscale.core.tree import tree_zeros_like
from fedjaxscale.engine.executor import Engine
from fedjaxscale.engine.placement import CLIENTS, place_replicated, put_host, put_rows
from fedjaxscale.models.model import Model

CALL_BYTES = 256 * 2**20  # the most example bytes one evaluation call sends (up to 64 batches)


@dataclasses.dataclass(frozen=True)
class EvalResult:
  """Evaluation totals and per-client values.

  Attributes:
    metrics: example-weighted means over every evaluated example (``loss``, ``accuracy``, ...).
    per_client: name -> ``[clients]`` per-client means, plus ``count`` (examples per client).
    client_ids: the evaluated clients, in order.
  """

  metrics: dict[str, float]
  per_client: dict[str, np.ndarray]
  client_ids: np.ndarray

  def summary(self, quantiles=(0.1, 0.5, 0.9)) -> dict[str, float]:
    """Totals plus quantiles of per-client accuracy (when the model reports it)."""
    out = dict(self.metrics)
    if "accuracy" in self.per_client and len(self.per_client["accuracy"]):
      acc = self.per_client["accuracy"][self.per_client["count"] > 0]
      for q in quantiles:
        out[f"client_accuracy_p{int(q * 100)}"] = float(np.quantile(acc, q))
    return out


class Evaluator:
  """Evaluates a model on clients of a ``FederatedDataset`` (or any offsets + features).

  Args:
    model: the model.
    engine: supplies the mesh (default: a fresh ``Engine()``).
    batch_size: examples per batch, rounded to a multiple of the device count; one device call
      scans up to 64 batches (as many as keep its examples within ``CALL_BYTES``).

  Example::

    evaluator = Evaluator(model)
    result = evaluator(params, test_dataset)
    print(result.metrics['accuracy'], result.summary()['client_accuracy_p10'])
  """

  def __init__(self, model: Model, engine: Engine | None = None, batch_size: int = 1024):
    self.model = model
    self.engine = engine or Engine()
    mesh = self.engine.mesh or jax.make_mesh(
      (1,), (CLIENTS,), axis_types=(jax.sharding.AxisType.Explicit,), devices=jax.devices()[:1]
    )
    self.mesh = mesh
    devices = int(mesh.shape[CLIENTS])
    self.batch_size = max(devices, -(-batch_size // devices) * devices)
    self._programs = {}

  def __call__(self, params, dataset, clients: np.ndarray | None = None) -> EvalResult:
    """Evaluates ``params`` on ``clients`` (indices; default all) of ``dataset``."""
    index = np.arange(dataset.num_clients) if clients is None else np.asarray(clients, np.int64)
    rows, sizes = dataset.client_rows(index)
    owner = np.repeat(np.arange(len(index), dtype=np.int32), sizes)
    num_segments = bucket_size(len(index))
    sums = None
    params = place_replicated(params, self.mesh)
    sharded = NamedSharding(self.mesh, P(CLIENTS))
    n = len(rows)
    size = self.batch_size if n > self.batch_size else bucket_size(n, int(self.mesh.shape[CLIENTS]))
    first = 0
    per_example = sum(x.dtype.itemsize * int(np.prod(x.shape[1:])) for x in dataset.features.values())
    for batches in _groups(-(-n // size), _most_batches(size * per_example)):
      # One call scans `batches` batches (the last ones may be all padding): a call or two an
      # evaluation, not one per batch.
      chunk = rows[first : first + batches * size]
      k = len(chunk)
      pad = batches * size - k
      # Each process reads only the examples of its own devices' share of the rows.
      batch = put_rows(dataset.features, np.pad(chunk, (0, pad), mode="edge"), sharded)
      mask, seg = put_host((np.arange(batches * size) < k, np.pad(owner[first : first + k], (0, pad))), sharded)
      out = self._program(params, batch, num_segments, batches)(params, (batch, mask, seg))
      sums = out if sums is None else jax.tree.map(jnp.add, sums, out)
      first += k
    names = ["count", "loss"] + list(self.model.metrics)
    if sums is None:
      host = {k: np.zeros(num_segments) for k in names}
    else:
      host = {k: np.asarray(v, np.float64) for k, v in jax.device_get(sums).items()}
    count = host["count"][: len(index)]
    total = max(count.sum(), 1.0)
    per_client = {"count": count}
    metrics = {}
    for k in names[1:]:
      per_client[k] = host[k][: len(index)] / np.maximum(count, 1.0)
      metrics[k] = float(host[k][: len(index)].sum() / total)
    metrics["num_examples"] = float(count.sum())
    return EvalResult(metrics, per_client, np.asarray(dataset.client_ids)[index])

  def _program(self, params, batch, num_segments, batches):
    key = (
      jax.tree.structure(params),
      tuple((k, v.shape, str(v.dtype)) for k, v in sorted(batch.items())),
      num_segments,
      batches,
    )  # (shapes only: the batch values change every call)
    if key not in self._programs:
      model = self.model

      def batch_sums(params, data):
        batch, mask, seg = data
        sums = model.evaluate_per_example(params, batch, mask)
        return {k: jax.ops.segment_sum(v, seg, num_segments=num_segments) for k, v in sums.items()}

      def per_shard(params, data):
        # This device's rows of the call, in `batches` batches of the configured size.
        data = jax.tree.map(lambda x: x.reshape((batches, -1) + x.shape[1:]), data)
        if batches == 1:
          local = batch_sums(params, jax.tree.map(lambda x: x[0], data))
        else:
          zeros = tree_zeros_like(jax.eval_shape(batch_sums, params, jax.tree.map(lambda x: x[0], data)))
          local, _ = jax.lax.scan(lambda acc, d: (jax.tree.map(jnp.add, acc, batch_sums(params, d)), None), zeros, data)
        return jax.lax.psum(local, CLIENTS)

      fn = jax.shard_map(per_shard, mesh=self.mesh, in_specs=(P(), P(CLIENTS)), out_specs=P(), check_vma=False)
      self._programs[key] = jax.jit(fn)
    return self._programs[key]


def _most_batches(batch_bytes: int, budget: int = CALL_BYTES) -> int:
  """Batches one call may hold: up to 64, as many as keep its examples within ``budget``."""
  most = max(1, budget // max(batch_bytes, 1))
  return int(min(64, 1 << (most.bit_length() - 1)))


def _groups(batches: int, largest: int = 64) -> list[int]:
  """``batches`` split into calls of at most ``largest`` batches, the last call's count rounded up
  to the shape grid (``bucket_size``: at most an eighth of it padding), so a test set compiles one
  or two programs and a call's memory stays bounded."""
  out = [largest] * (batches // largest)
  rest = batches % largest
  return out + ([min(bucket_size(rest), largest)] if rest else [])
