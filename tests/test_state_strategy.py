"""The client-state path's execution strategy under ``strategy="auto"`` (``state_compiled._choose``).

On CPU, one client a lane: ``vmap`` runs first and stays when a chunk is quick; otherwise
``map:4`` is timed beside it; a ``vmap`` program over the memory budget is not run. Every choice
is recorded in ``Engine.strategy_choices`` (its shape marked ``"state": True``) and adopted by a
resumed run. The chosen program is the one a pinned strategy compiles: same bits.
"""

import jax
import numpy as np
import pytest

from fedjaxscale import models
from fedjaxscale.algorithms.scaffold import scaffold
from fedjaxscale.data import make_cohort
from fedjaxscale.engine import Engine, autotune

FEATURES, CLASSES, BATCH, CLIENTS = 3, 2, 2, 8


def _round(engine: Engine, pack: bool = False):
  """One SCAFFOLD round (its control variates are the clients' states) on ``engine``."""
  rng = np.random.default_rng(3)
  data = [
    {"x": rng.normal(size=(n, FEATURES)).astype(np.float32), "y": rng.integers(0, CLASSES, n).astype(np.int32)}
    for n in rng.integers(2, 7, CLIENTS)
  ]
  model = models.logistic_regression(FEATURES, CLASSES)
  alg = scaffold(model, 0.3, 0.7, num_clients=CLIENTS, engine=engine)
  server = alg.init(model.init(jax.random.key(0)))
  cohort = make_cohort(data, BATCH, local_epochs=1, shuffle=False, pack=pack, lane_multiple=engine.client_multiple)
  blank = jax.tree.map(lambda s: np.zeros((CLIENTS,) + s.shape, s.dtype), alg.state_spec(server))
  server, _, result = alg.apply(server, cohort, jax.random.key(0), blank, np.ones(CLIENTS, bool))
  return jax.device_get(server.params), result


def _state_records(engine: Engine) -> list[dict]:
  return [c for c in engine.strategy_choices if c["shape"].get("state")]


def _same(a, b) -> None:
  (params_a, result_a), (params_b, result_b) = a, b
  for x, y in zip(jax.tree.leaves((params_a, result_a.states)), jax.tree.leaves((params_b, result_b.states))):
    np.testing.assert_array_equal(np.asarray(x), np.asarray(y))


@pytest.mark.skipif(jax.default_backend() != "cpu", reason="the timed choice is made on CPU")
def test_a_quick_chunk_keeps_vmap_and_records_it(monkeypatch):
  monkeypatch.setattr(autotune, "AUTOTUNE_MIN_SECONDS", 1e9)  # every chunk is quick (whatever the load)
  engine = Engine()
  got = _round(engine)
  (record,) = _state_records(engine)
  assert record["chosen"] == "vmap" and list(record["candidates"]) == ["vmap"]
  assert record["shape"]["lanes"] == CLIENTS and record["shape"]["packed"] is False
  _same(got, _round(Engine(strategy="vmap")))


@pytest.mark.skipif(jax.default_backend() != "cpu", reason="the timed choice is made on CPU")
def test_a_slow_chunk_times_map4_beside_vmap(monkeypatch):
  monkeypatch.setattr(autotune, "AUTOTUNE_MIN_SECONDS", 0.0)  # every chunk is worth tuning
  engine = Engine()
  got = _round(engine)
  (record,) = _state_records(engine)
  assert set(record["candidates"]) == {"vmap", "map:4"} and record["chosen"] in record["candidates"]
  assert all(t > 0 for t in record["candidates"].values())
  _same(got, _round(Engine(strategy=record["chosen"])))


@pytest.mark.skipif(jax.default_backend() != "cpu", reason="the timed choice is made on CPU")
def test_vmap_over_the_memory_budget_is_not_run():
  engine = Engine(memory_budget_bytes=1)
  got = _round(engine)
  (record,) = _state_records(engine)
  assert record["chosen"] == "map:4" and record["candidates"] == {} and record["vmap_bytes"] > 1
  _same(got, _round(Engine(strategy="map:4")))


@pytest.mark.skipif(jax.default_backend() != "cpu", reason="the timed choice is made on CPU")
def test_a_resumed_run_adopts_the_recorded_choice():
  """A record of an earlier process (here one saying ``map:4``) is run without timing again."""
  first = Engine()
  _round(first)
  (record,) = _state_records(first)
  other = "map:4" if record["chosen"] == "vmap" else "vmap"
  resumed = Engine()
  resumed.adopt_strategy_choices([dict(record, chosen=other)])
  got = _round(resumed)
  (adopted,) = _state_records(resumed)
  assert adopted["chosen"] == other and adopted.get("adopted") is True
  _same(got, _round(Engine(strategy=other)))


@pytest.mark.skipif(jax.default_backend() != "cpu", reason="the timed choice is made on CPU")
def test_another_lane_count_of_a_timed_shape_takes_its_winner(monkeypatch):
  monkeypatch.setattr(autotune, "AUTOTUNE_MIN_SECONDS", 0.0)
  engine = Engine()
  rng = np.random.default_rng(3)
  data = [
    {"x": rng.normal(size=(4, FEATURES)).astype(np.float32), "y": rng.integers(0, CLASSES, 4).astype(np.int32)}
    for _ in range(8)
  ]
  model = models.logistic_regression(FEATURES, CLASSES)
  alg = scaffold(model, 0.3, 0.7, num_clients=8, engine=engine)
  server = alg.init(model.init(jax.random.key(0)))
  for clients in (8, 4):  # the same per-lane program, then half the lanes: not timed again
    cohort = make_cohort(data[:clients], BATCH, local_steps=2, lane_multiple=engine.client_multiple)
    blank = jax.tree.map(lambda s, n=clients: np.zeros((n,) + s.shape, s.dtype), alg.state_spec(server))
    alg.apply(server, cohort, jax.random.key(0), blank, np.ones(clients, bool))
  timed, sibling = _state_records(engine)
  assert set(timed["candidates"]) == {"vmap", "map:4"}
  assert sibling["candidates"] == {} and sibling["chosen"] == timed["chosen"]
  assert sibling["timed_at"] == timed["shape"] and sibling["shape"]["lanes"] == 4


def test_packed_lanes_and_a_pinned_strategy_are_not_timed():
  engine = Engine()
  _round(engine, pack=True)
  assert _state_records(engine) == []  # packed: `map` on CPU (each client finished once), untimed
  pinned = Engine(strategy="map:4")
  _round(pinned)
  assert _state_records(pinned) == []
