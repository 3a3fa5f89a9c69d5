"""Several rounds in one compiled program (``Algorithm.apply_rounds``) against one ``apply`` a round."""

import jax
import numpy as np
import optax
import pytest

from fedjaxscale import algorithms, models
from fedjaxscale.data import FederatedDataset, gather_cohort, make_cohort, write_dataset
from fedjaxscale.engine import Engine

FACTORIES = {
  "fedavg": lambda model, engine: algorithms.fedavg(
    model, optax.sgd(0.1), server_optimizer=optax.sgd(0.7), engine=engine
  ),
  "fedprox": lambda model, engine: algorithms.fedprox(model, optax.sgd(0.1), mu=0.5, engine=engine),
  "fedyogi": lambda model, engine: algorithms.fedyogi(model, optax.sgd(0.1), server_lr=0.05, engine=engine),
  "fedadam": lambda model, engine: algorithms.fedadam(model, optax.sgd(0.1), server_lr=0.05, engine=engine),
  "fedadagrad": lambda model, engine: algorithms.fedadagrad(model, optax.sgd(0.1), server_lr=0.05, engine=engine),
}


def clients(seed, sizes=(7, 12, 9, 4, 15)):
  rng = np.random.default_rng(seed)
  return [{"x": rng.normal(size=(n, 5)).astype(np.float32), "y": rng.integers(0, 3, n).astype(np.int32)} for n in sizes]


def one_at_a_time(alg, state, cohorts, keys):
  diagnostics = []
  for cohort, key in zip(cohorts, keys):
    state, d = alg.apply(state, cohort, key)
    diagnostics.append(dict(d))
  return state, diagnostics


def assert_rounds_equal(alg, state, cohorts, keys, rtol=1e-5):
  compiles = alg.engine.stats.compiles
  want, want_diag = one_at_a_time(alg, state, cohorts, keys)
  assert alg.engine.stats.compiles >= compiles  # (the single-round programs)
  compiles = alg.engine.stats.compiles
  got, got_diag = alg.apply_rounds(state, cohorts, keys)
  assert alg.engine.stats.compiles == compiles + 1, "the rounds ran as one program"
  for a, b in zip(jax.tree.leaves(want), jax.tree.leaves(got)):
    np.testing.assert_allclose(np.asarray(a, np.float64), np.asarray(b, np.float64), rtol=rtol, atol=1e-6)
  assert len(got_diag) == len(cohorts)
  for w, g in zip(want_diag, got_diag):
    g = dict(g)
    assert sorted(w) == sorted(g)
    for k in w:
      np.testing.assert_allclose(
        np.asarray(g[k], np.float64), np.asarray(w[k], np.float64), rtol=rtol, atol=1e-6, err_msg=k
      )


@pytest.mark.parametrize("name", sorted(FACTORIES))
def test_rounds_equal_one_apply_a_round(name):
  model = models.logistic_regression(5, 3)
  alg = FACTORIES[name](model, Engine())  # four forced devices: lanes sharded
  state = alg.init(model.init(jax.random.key(0)))
  cohorts = [make_cohort(clients(r), 4, local_steps=3, seed=r) for r in range(4)]
  keys = jax.random.split(jax.random.key(1), 4)
  assert_rounds_equal(alg, state, cohorts, keys)


@pytest.mark.parametrize("strategy", ["vmap", "map"])
def test_packed_cohorts_on_one_device(strategy):
  """Ragged clients packed into lanes (local epochs), a planned shape so every round agrees."""
  model = models.logistic_regression(5, 3)
  one = jax.sharding.Mesh(np.array(jax.devices()[:1]), ("clients",))
  alg = FACTORIES["fedyogi"](model, Engine(mesh=one, strategy=strategy))
  state = alg.init(model.init(jax.random.key(0)))
  cohorts = [
    make_cohort(clients(r, (3, 11, 6, 17, 2, 8)), 4, local_epochs=1.0, seed=r, shapes=[(4, 6)]) for r in range(3)
  ]
  assert all(c.parts[0].packed and c.parts[0].rows.shape[:2] == (4, 6) for c in cohorts)
  assert_rounds_equal(alg, state, cohorts, [jax.random.key(r) for r in range(3)])


def test_resident_dataset_rounds_and_no_recompile(tmp_path):
  """Cohorts gathered from one dataset (resident on the device, gathered there by index); a
  second block of rounds of the same shape compiles nothing."""
  sizes = np.random.default_rng(0).integers(3, 20, 30)
  rng = np.random.default_rng(1)
  features = {"x": rng.normal(size=(sizes.sum(), 5)).astype(np.float32), "y": rng.integers(0, 3, sizes.sum())}
  write_dataset(tmp_path / "d", [f"c{i}" for i in range(30)], features, sizes)
  train = FederatedDataset.open(tmp_path / "d")
  model = models.logistic_regression(5, 3)
  alg = FACTORIES["fedavg"](model, Engine())

  def block(first):
    return [
      gather_cohort(train, np.arange(first + 4 * r, first + 4 * r + 4), 4, local_steps=2, seed=r) for r in range(3)
    ]

  state = alg.init(model.init(jax.random.key(0)))
  keys = jax.random.split(jax.random.key(2), 3)
  assert_rounds_equal(alg, state, block(0), keys)
  compiles = alg.engine.stats.compiles
  state, diagnostics = alg.apply_rounds(state, block(12), keys)
  assert alg.engine.stats.compiles == compiles
  assert all(np.isfinite(d["train_loss"]) for d in diagnostics)


def test_cohorts_of_different_shapes_run_one_at_a_time():
  model = models.logistic_regression(5, 3)
  alg = FACTORIES["fedavg"](model, Engine())
  state = alg.init(model.init(jax.random.key(0)))
  cohorts = [make_cohort(clients(0), 4, local_steps=3), make_cohort(clients(1), 4, local_steps=5)]
  keys = [jax.random.key(0), jax.random.key(1)]
  want, _ = one_at_a_time(alg, state, cohorts, keys)
  compiles = alg.engine.stats.compiles
  got, diagnostics = alg.apply_rounds(state, cohorts, keys)
  assert alg.engine.stats.compiles == compiles  # the single-round programs, already compiled
  assert len(diagnostics) == 2
  for a, b in zip(jax.tree.leaves(want), jax.tree.leaves(got)):
    np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


def test_one_key_per_cohort():
  model = models.logistic_regression(5, 3)
  alg = FACTORIES["fedavg"](model, Engine())
  state = alg.init(model.init(jax.random.key(0)))
  cohorts = [make_cohort(clients(r), 4, local_steps=3) for r in range(3)]
  with pytest.raises(ValueError, match="one key per cohort: 3 cohorts, 2 keys"):
    alg.apply_rounds(state, cohorts, jax.random.split(jax.random.key(0), 2))


def test_rounds_whose_inputs_crowd_the_memory_budget_run_one_at_a_time(monkeypatch):
  from fedjaxscale.engine import rounds

  monkeypatch.setattr(rounds, "INPUT_SHARE", 0.0)  # no block of rounds fits
  model = models.logistic_regression(5, 3)
  alg = FACTORIES["fedadam"](model, Engine())
  state = alg.init(model.init(jax.random.key(0)))
  cohorts = [make_cohort(clients(r), 4, local_steps=3, seed=r) for r in range(3)]
  keys = jax.random.split(jax.random.key(3), 3)
  want, _ = one_at_a_time(alg, state, cohorts, keys)
  compiles = alg.engine.stats.compiles
  got, diagnostics = alg.apply_rounds(state, cohorts, keys)
  assert alg.engine.stats.compiles == compiles and len(diagnostics) == 3
  for a, b in zip(jax.tree.leaves(want), jax.tree.leaves(got)):
    np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
