"""Federated evaluation against a direct NumPy computation, per client and in total."""

import jax
import numpy as np
import pytest

from fedjaxscale import models
from fedjaxscale.data import write_synthetic
from fedjaxscale.engine import Engine, Evaluator


@pytest.fixture(scope="module")
def test_split(tmp_path_factory):
  return write_synthetic(tmp_path_factory.mktemp("synthetic"), 30, seed=1, max_size=200)["test"]


def reference(model, params, dataset, clients):
  x, y = np.asarray(dataset.features["x"]), np.asarray(dataset.features["y"])
  logits = np.asarray(model.apply(params, {"x": x}, None, False), np.float64)
  logits -= logits.max(-1, keepdims=True)
  loss = -(logits[np.arange(len(y)), y] - np.log(np.exp(logits).sum(-1)))
  correct = (logits.argmax(-1) == y).astype(np.float64)
  off = dataset.offsets
  per_loss = np.array([loss[off[k] : off[k + 1]].mean() for k in clients])
  per_acc = np.array([correct[off[k] : off[k + 1]].mean() for k in clients])
  rows = np.concatenate([np.arange(off[k], off[k + 1]) for k in clients])
  return loss[rows].mean(), correct[rows].mean(), per_loss, per_acc


@pytest.mark.parametrize("batch_size", [8, 64, 4096])  # many batches (several scanned calls), a few, one
def test_matches_numpy(test_split, batch_size):
  model = models.logistic_regression(60, 10)
  params = model.init(jax.random.key(3))
  clients = np.array([4, 0, 17, 29, 3])
  result = Evaluator(model, batch_size=batch_size)(params, test_split, clients)
  loss, acc, per_loss, per_acc = reference(model, params, test_split, clients)
  np.testing.assert_allclose(result.metrics["loss"], loss, rtol=1e-5)
  np.testing.assert_allclose(result.metrics["accuracy"], acc, rtol=1e-6)
  np.testing.assert_allclose(result.per_client["loss"], per_loss, rtol=1e-5)
  np.testing.assert_allclose(result.per_client["accuracy"], per_acc, rtol=1e-6)
  np.testing.assert_array_equal(result.per_client["count"], test_split.client_sizes[clients])
  np.testing.assert_array_equal(result.client_ids, test_split.client_ids[clients])
  summary = result.summary()
  assert summary["client_accuracy_p10"] <= summary["client_accuracy_p50"] <= summary["client_accuracy_p90"]


def test_one_device_equals_four(test_split):
  model = models.logistic_regression(60, 10)
  params = model.init(jax.random.key(0))
  one = jax.make_mesh((1,), ("clients",), axis_types=(jax.sharding.AxisType.Explicit,), devices=jax.devices()[:1])
  a = Evaluator(model, Engine(mesh=one), batch_size=100)(params, test_split)
  b = Evaluator(model, Engine(), batch_size=100)(params, test_split)
  assert jax.device_count() == 4
  np.testing.assert_allclose(a.per_client["loss"], b.per_client["loss"], rtol=1e-6)
  assert a.metrics["accuracy"] == b.metrics["accuracy"]


def test_batches_split_into_few_calls():
  from fedjaxscale.engine.evaluation import _groups, _most_batches

  assert _groups(46) == [48] and _groups(17) == [18]
  assert _groups(1) == [1] and _groups(0) == []
  assert _groups(200, largest=64) == [64, 64, 64, 8]
  assert _most_batches(1024 * 784) == 64 and _most_batches(1024 * 3072 * 4) == 16 and _most_batches(2**40) == 1
  for n in range(1, 300):
    g = _groups(n)
    assert n <= sum(g) <= n + max(1, (n % 64) // 8) and max(g) <= 64
