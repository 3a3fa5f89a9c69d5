"""Every algorithm against a NumPy reference on three tiny hand-built clients of unequal sizes."""

import jax
import numpy as np
import optax
import pytest

from fedjaxscale import algorithms, models
from fedjaxscale.data import make_cohort
from fedjaxscale.engine import Engine
from tests import reference

FEATURES, CLASSES, BATCH, CLIENT_LR, ROUNDS = 6, 3, 4, 0.1, 3


def tiny_clients(sizes=(5, 11, 23), seed=0):
  rng = np.random.default_rng(seed)
  out = []
  for n in sizes:
    x = rng.normal(size=(n, FEATURES)).astype(np.float32)
    y = rng.integers(0, CLASSES, n).astype(np.int32)
    out.append({"x": x, "y": y})
  return out


# name -> (factory(model) -> Algorithm, reference server rule, weighting, FedProx mu)
ALGORITHMS = {
  "fedavg": (lambda m: algorithms.fedavg(m, optax.sgd(CLIENT_LR)), ("sgd", 1.0), "num_examples", 0.0),
  "fedavg_uniform": (
    lambda m: algorithms.fedavg(m, optax.sgd(CLIENT_LR), weighting="uniform"),
    ("sgd", 1.0),
    "uniform",
    0.0,
  ),
  "fedavg_server_lr": (
    lambda m: algorithms.fedavg(m, optax.sgd(CLIENT_LR), optax.sgd(0.5)),
    ("sgd", 0.5),
    "num_examples",
    0.0,
  ),
  "fedprox": (lambda m: algorithms.fedprox(m, optax.sgd(CLIENT_LR), mu=0.5), ("sgd", 1.0), "num_examples", 0.5),
  "fedyogi": (
    lambda m: algorithms.fedyogi(m, optax.sgd(CLIENT_LR), server_lr=0.03),
    ("yogi", 0.03),
    "num_examples",
    0.0,
  ),
  "fedadam": (
    lambda m: algorithms.fedadam(m, optax.sgd(CLIENT_LR), server_lr=0.03),
    ("adam", 0.03),
    "num_examples",
    0.0,
  ),
  "fedadagrad": (
    lambda m: algorithms.fedadagrad(m, optax.sgd(CLIENT_LR), server_lr=0.03),
    ("adagrad", 0.03),
    "num_examples",
    0.0,
  ),
}
MODES = {"epochs": {"local_epochs": 2}, "steps": {"local_steps": 4}}


def _to_numpy(params):
  return [np.asarray(params["Dense_0"]["kernel"], np.float64), np.asarray(params["Dense_0"]["bias"], np.float64)]


@pytest.mark.parametrize("mode", sorted(MODES))
@pytest.mark.parametrize("name", sorted(ALGORITHMS))
def test_matches_numpy_reference(name, mode):
  factory, (rule, server_lr), weighting, mu = ALGORITHMS[name]
  model = models.logistic_regression(FEATURES, CLASSES)
  alg = factory(model)
  clients = tiny_clients()
  cohort = make_cohort(clients, BATCH, shuffle=False, **MODES[mode])
  state = alg.init(model.init(jax.random.key(0)))
  params = _to_numpy(state.params)
  server = reference.ServerRule(rule, server_lr)
  np_clients = [(c["x"].astype(np.float64), c["y"]) for c in clients]
  for r in range(ROUNDS):
    state, diagnostics = alg.apply(state, cohort, jax.random.key(r))
    delta = reference.mean_delta(np_clients, params[0], params[1], CLIENT_LR, BATCH, weighting, mu, **MODES[mode])
    params = server.step(params, delta)
    np.testing.assert_allclose(_to_numpy(state.params)[0], params[0], rtol=1e-5, atol=1e-6, err_msg=f"round {r}")
    np.testing.assert_allclose(_to_numpy(state.params)[1], params[1], rtol=1e-5, atol=1e-6, err_msg=f"round {r}")
  assert int(state.round) == ROUNDS
  assert diagnostics["num_clients"] == 3 and diagnostics["num_nonfinite"] == 0


def test_client_losses_match_reference():
  """Per-client training loss is the mean per-example loss over every local step."""
  model = models.logistic_regression(FEATURES, CLASSES)
  alg = algorithms.fedavg(model, optax.sgd(CLIENT_LR))
  clients = tiny_clients()
  state = alg.init(model.init(jax.random.key(0)))
  _, diagnostics = alg.apply(state, make_cohort(clients, BATCH, local_epochs=1, shuffle=False), jax.random.key(0))
  w, b = _to_numpy(state.params)
  for k, c in enumerate(clients):
    x, y = c["x"].astype(np.float64), c["y"]
    wk, bk, losses = w.copy(), b.copy(), []
    for idx in reference.batches(len(y), BATCH, local_epochs=1):
      loss, gw, gb = reference.loss_and_grad(wk, bk, x[idx], y[idx])
      losses.append(loss * len(idx))
      wk, bk = wk - CLIENT_LR * gw, bk - CLIENT_LR * gb
    np.testing.assert_allclose(diagnostics["client_loss"][k], sum(losses) / len(y), rtol=1e-5)
    assert diagnostics["client_examples_trained"][k] == len(y)
  expected = np.sum(diagnostics["client_loss"] * [5, 11, 23]) / 39
  np.testing.assert_allclose(diagnostics["train_loss"], expected, rtol=1e-6)


def test_fedprox_mu_zero_is_fedavg():
  model = models.logistic_regression(FEATURES, CLASSES)
  cohort = make_cohort(tiny_clients(), BATCH, local_epochs=1, shuffle=False)
  params = model.init(jax.random.key(0))
  out = []
  for alg in (algorithms.fedavg(model, optax.sgd(CLIENT_LR)), algorithms.fedprox(model, optax.sgd(CLIENT_LR), mu=0.0)):
    state, _ = alg.apply(alg.init(params), cohort, jax.random.key(0))
    out.append(state.params)
  jax.tree.map(lambda a, b: np.testing.assert_array_equal(np.asarray(a), np.asarray(b)), *out)


def test_fedopt_differs_from_optax_bias_corrected_rule():
  """The adaptive rule is Reddi et al.'s (no bias correction), not optax.adam's: their first steps differ."""
  grads = {"w": np.array([0.5, -2.0], np.float32)}
  ours = algorithms.fedopt_server("adam", 0.1, 0.9, 0.99, 1e-3)
  upd, _ = ours.update(grads, ours.init(grads))
  m, v = 0.1 * -grads["w"], 0.01 * grads["w"] ** 2 + 0.99 * 1e-6
  np.testing.assert_allclose(np.asarray(upd["w"]), 0.1 * m / (np.sqrt(v) + 1e-3), rtol=1e-5)
  theirs = optax.adam(0.1, 0.9, 0.99, eps=1e-3)
  upd2, _ = theirs.update(grads, theirs.init(grads))
  assert not np.allclose(np.asarray(upd["w"]), np.asarray(upd2["w"]), rtol=1e-2)


def test_bad_arguments_are_named():
  model = models.logistic_regression(FEATURES, CLASSES)
  with pytest.raises(ValueError, match="weighting"):
    algorithms.fedavg(model, optax.sgd(0.1), weighting="median")
  with pytest.raises(ValueError, match="mu"):
    algorithms.fedprox(model, optax.sgd(0.1), mu=-1.0)
  with pytest.raises(ValueError, match="FedOpt rule"):
    algorithms.fedopt(model, optax.sgd(0.1), "lamb")


@pytest.mark.parametrize("name", ["fedavg", "fedyogi"])
def test_second_round_compiles_nothing(name):
  """Round 2 reuses every program of round 1, the server update's included: ``init`` places the
  state exactly as the server update returns it (an uncommitted ``jnp.zeros`` round counter once
  made round 2 compile the server update again)."""
  compiles = []

  def listen(event, duration, **kwargs):
    if event == "/jax/core/compile/backend_compile_duration":
      compiles.append(event)

  jax.monitoring.register_event_duration_secs_listener(listen)
  rng = np.random.default_rng(0)
  clients = [
    {"x": rng.normal(size=(12, 4)).astype(np.float32), "y": rng.integers(0, 3, 12).astype(np.int32)} for _ in range(3)
  ]
  model = models.logistic_regression(4, 3)
  # One device: there a fresh array is already "equivalent" to a replicated one (4 devices copy it).
  mesh = jax.sharding.Mesh(np.array(jax.devices()[:1]), ("clients",))
  engine = Engine("vmap", mesh=mesh, strategy="vmap")
  alg = (
    algorithms.fedavg(model, optax.sgd(0.1), server_optimizer=optax.sgd(1.0), engine=engine)
    if name == "fedavg"
    else algorithms.fedyogi(model, optax.sgd(0.1), server_lr=0.01, engine=engine)
  )
  state = alg.init(model.init(jax.random.key(0)))
  cohort = make_cohort(clients, 4, local_steps=2, shuffle=False)
  state, _ = alg.apply(state, cohort, jax.random.key(1))
  jax.block_until_ready(state)
  before = len(compiles)
  for r in range(2, 4):
    state, _ = alg.apply(state, cohort, jax.random.key(r))
  jax.block_until_ready(state)
  assert len(compiles) == before
