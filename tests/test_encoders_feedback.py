"""Top-k error feedback through the client-state store: a NumPy reference over rounds in which a
client skips a round, and the residuals a run keeps survive its checkpoints (resume is exact)."""

import jax
import numpy as np
import optax

from fedjaxscale import algorithms, models
from fedjaxscale.algorithms import dp, encoders
from fedjaxscale.algorithms.stateful import StatefulAlgorithm
from fedjaxscale.data import make_cohort
from fedjaxscale.engine.state import stack_states
from fedjaxscale.training import train_and_evaluate
from fedjaxscale.training.outputs import read_metrics
from tests import reference
from tests.test_algorithms import BATCH, CLASSES, CLIENT_LR, FEATURES, tiny_clients
from tests.test_training import load_config, without_wall

K = 4


def _top_k(v, k):
  out = np.zeros_like(v)
  keep = np.argsort(-np.abs(v), kind="stable")[:k]
  out[keep] = v[keep]
  return out


def test_error_feedback_matches_numpy_with_a_client_skipping_a_round():
  model = models.logistic_regression(FEATURES, CLASSES)
  alg = dp.private_aggregation(
    algorithms.fedavg(model, optax.sgd(CLIENT_LR)), encoder=encoders.top_k(K), error_feedback=True
  )
  assert isinstance(alg, StatefulAlgorithm)
  clients = tiny_clients()
  state = alg.init(model.init(jax.random.key(0)))
  spec = alg.state_spec(state)
  store = stack_states(spec, len(clients))  # the population's residuals (a store in miniature)
  seen = np.zeros(len(clients), bool)
  w = np.asarray(state.params["Dense_0"]["kernel"], np.float64)
  b = np.asarray(state.params["Dense_0"]["bias"], np.float64)
  e = np.zeros((len(clients), b.size + w.size))  # residuals flattened as ravel_pytree does: bias, kernel
  for r, members in enumerate([[0, 1, 2], [0, 2], [0, 1, 2], [1, 2]]):  # client 1 skips round 1, 0 skips 3
    cohort = make_cohort([clients[m] for m in members], BATCH, local_epochs=1, shuffle=False)
    index = np.asarray(members)
    states = jax.tree.map(lambda x, index=index: x[index], store)
    state, diag, new = alg.apply(state, cohort, jax.random.key(r), states, ~seen[members])
    assert new.written.all()
    for i, m in enumerate(members):
      jax.tree.map(lambda s, v, i=i, m=m: s.__setitem__(m, v[i]), store, new.states)
    seen[members] = True
    total, weights = np.zeros_like(e[0]), 0.0
    for m in members:
      c = clients[m]
      dw, db = reference.client_update(w, b, c["x"].astype(np.float64), c["y"], CLIENT_LR, BATCH, local_epochs=1)
      v = np.concatenate([db, dw.reshape(-1)]) + e[m]
      sent = _top_k(v, K)
      e[m] = v - sent
      total += len(c["y"]) * sent
      weights += len(c["y"])
    mean = total / weights
    b, w = b - mean[: b.size], w - mean[b.size :].reshape(w.shape)
    np.testing.assert_allclose(np.asarray(state.params["Dense_0"]["kernel"]), w, rtol=1e-4, atol=1e-6)
    np.testing.assert_allclose(np.asarray(state.params["Dense_0"]["bias"]), b, rtol=1e-4, atol=1e-6)
    for m in range(len(clients)):  # the skipped client's residual is the one it left with
      got = np.concatenate([store["Dense_0"]["bias"][m], store["Dense_0"]["kernel"][m].reshape(-1)])
      np.testing.assert_allclose(got, e[m], rtol=1e-4, atol=1e-6)
    assert np.count_nonzero(e[members[0]]) > 0 and diag["num_clients"] == len(members)


def test_error_feedback_run_resumes_exactly(tmp_path):
  overrides = {
    "compression.encoder": "topk",
    "compression.topk": 50,
    "compression.error_feedback": True,
    "eval_every": 1,
  }
  full = tmp_path / "full"
  summary = train_and_evaluate(load_config("compression", "small", **overrides), full, show_progress=False)
  records = read_metrics(full)
  assert records[-1]["states_stored"] > 0 and summary["upload_bits_per_client"] == 50 * (32 + 12)
  part = tmp_path / "part"
  train_and_evaluate(load_config("compression", "small", rounds=2, **overrides), part, show_progress=False)
  train_and_evaluate(load_config("compression", "small", **overrides), part, resume=True, show_progress=False)
  assert without_wall(read_metrics(part)) == without_wall(records)
