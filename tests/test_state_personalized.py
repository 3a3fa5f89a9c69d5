"""Personalized evaluation: per-client models, local adaptation, side by side with the global model."""

import jax
import numpy as np
import optax

from fedjaxscale import models
from fedjaxscale.data import gather_cohort
from fedjaxscale.data.dataset import write_dataset_from_clients
from fedjaxscale.engine import Engine, Evaluator
from fedjaxscale.engine.personalized import adapt, adaptation_program, evaluate_per_client
from tests.test_scaffold import BATCH, CLASSES, FEATURES, hand_clients, np_grad


def dataset(tmp_path, seed=0):
  return write_dataset_from_clients(tmp_path / f"d{seed}", {f"c{k}": c for k, c in enumerate(hand_clients(seed))})


def test_same_params_for_everybody_equals_the_global_evaluation(tmp_path):
  test = dataset(tmp_path, 1)
  model = models.logistic_regression(FEATURES, CLASSES)
  params = jax.device_get(model.init(jax.random.key(0)))
  stacked = jax.tree.map(lambda x: np.stack([x] * 3), params)
  mine = evaluate_per_client(model, stacked, test, np.arange(3), clients_per_call=2)
  glob = Evaluator(model, Engine("vmap"), 8)(params, test)
  for k in ("accuracy", "loss"):
    np.testing.assert_allclose(mine.per_client[k], glob.per_client[k], atol=1e-6)
    np.testing.assert_allclose(mine.metrics[k], glob.metrics[k], atol=1e-6)
  assert mine.summary().keys() == glob.summary().keys()  # p10/p50/p90 side by side


def test_each_client_is_evaluated_with_its_own_model(tmp_path):
  test = dataset(tmp_path, 1)
  model = models.logistic_regression(FEATURES, CLASSES)
  keys = jax.random.split(jax.random.key(3), 3)
  per = [jax.device_get(model.init(k)) for k in keys]
  stacked = jax.tree.map(lambda *xs: np.stack(xs), *per)
  mine = evaluate_per_client(model, stacked, test, np.array([2, 0]))
  for j, k in enumerate((2, 0)):
    one = Evaluator(model, Engine("vmap"), 8)(per[j], test, np.array([k]))
    np.testing.assert_allclose(mine.per_client["accuracy"][j], one.metrics["accuracy"], atol=1e-6)
    np.testing.assert_allclose(mine.per_client["loss"][j], one.metrics["loss"], atol=1e-6)


def test_local_adaptation_is_sgd_from_the_global_model(tmp_path):
  train = dataset(tmp_path, 0)
  model = models.logistic_regression(FEATURES, CLASSES)
  params = jax.device_get(model.init(jax.random.key(0)))
  engine = Engine("vmap")
  cohort = gather_cohort(train, np.arange(3), BATCH, local_steps=2, shuffle=False, lane_multiple=4)
  adapted = adapt(engine, adaptation_program(model, optax.sgd(0.5)), params, cohort, jax.random.key(0))
  for k, c in enumerate(hand_clients(0)):
    w = np.asarray(params["Dense_0"]["kernel"], np.float64)
    b = np.asarray(params["Dense_0"]["bias"], np.float64)
    x, y = c["x"].astype(np.float64), c["y"]
    order = np.concatenate([np.arange(len(y))] * 4)
    for s in range(2):  # local_steps cycles the data: min(batch, n) examples a step
      rows = order[s * min(BATCH, len(y)) : (s + 1) * min(BATCH, len(y))]
      gw, gb = np_grad(w, b, x[rows], y[rows])
      w, b = w - 0.5 * gw, b - 0.5 * gb
    np.testing.assert_allclose(adapted["Dense_0"]["kernel"][k], w, atol=1e-5)
    np.testing.assert_allclose(adapted["Dense_0"]["bias"][k], b, atol=1e-5)
