"""Engine properties: padding, backends, devices, compilation, determinism, NaN exclusion, chunks."""

import logging

import jax
import numpy as np
import optax
import pytest

from fedjaxscale import algorithms, models
from fedjaxscale.data import make_cohort
from fedjaxscale.engine import ClientError, Engine

BATCH = 4


def clients(sizes=(5, 11, 23, 3, 8, 14, 30), seed=0, features=6, classes=3):
  rng = np.random.default_rng(seed)
  return [
    {"x": rng.normal(size=(n, features)).astype(np.float32), "y": rng.integers(0, classes, n).astype(np.int32)}
    for n in sizes
  ]


def one_device_mesh():
  return jax.make_mesh((1,), ("clients",), axis_types=(jax.sharding.AxisType.Explicit,), devices=jax.devices()[:1])


def run_rounds(engine, cohort, rounds=2, alg_factory=None, seed=0):
  model = models.logistic_regression(6, 3)
  factory = alg_factory or (lambda m, e: algorithms.fedyogi(m, optax.sgd(0.1), server_lr=0.05, engine=e))
  alg = factory(model, engine)
  state = alg.init(model.init(jax.random.key(seed)))
  diags = []
  for r in range(rounds):
    state, d = alg.apply(state, cohort, jax.random.fold_in(jax.random.key(seed), r))
    diags.append(d)
  return state, diags


def assert_trees_close(a, b, tol=1e-6):
  jax.tree.map(lambda x, y: np.testing.assert_allclose(np.asarray(x), np.asarray(y), rtol=tol, atol=tol), a, b)


def test_forced_devices_are_present():
  assert jax.device_count() == 4, "tests/conftest.py forces 4 host devices"


def test_padded_equals_unpadded_equals_loop():
  data = clients()
  # Packed: clients end to end in shared lanes, lanes padded to a multiple of 4 devices.
  packed = make_cohort(data, BATCH, local_epochs=2, shuffle=False)
  # Unpacked: a lane per client, each padded with idle steps to the longest.
  unpacked = make_cohort(data, BATCH, local_epochs=2, shuffle=False, pack=False)
  assert packed.parts[0].packed and not unpacked.parts[0].packed
  assert packed.padding_efficiency(4) > unpacked.padding_efficiency(4)
  state_packed, d_packed = run_rounds(Engine("vmap"), packed)
  state_unpacked, d_unpacked = run_rounds(Engine("vmap"), unpacked)
  state_loop, d_loop = run_rounds(Engine("loop"), packed)
  for state, d in ((state_unpacked, d_unpacked), (state_loop, d_loop)):
    assert_trees_close(state_packed.params, state.params)
    np.testing.assert_allclose(d_packed[-1]["client_loss"], d[-1]["client_loss"], rtol=1e-6)
  np.testing.assert_array_equal(d_packed[-1]["client_examples_trained"], [10, 22, 46, 6, 16, 28, 60])


def test_one_client_per_cohort_equals_the_cohort():
  """The cohort's aggregate is the weighted mean of each client run alone (FedAvg, one round)."""
  data = clients()
  model = models.logistic_regression(6, 3)
  params = model.init(jax.random.key(0))
  alg = algorithms.fedavg(model, optax.sgd(0.1), engine=Engine("vmap"))
  whole, _ = alg.apply(alg.init(params), make_cohort(data, BATCH, local_epochs=1, shuffle=False), jax.random.key(0))
  singles = []
  for c in data:
    s, _ = alg.apply(alg.init(params), make_cohort([c], BATCH, local_epochs=1, shuffle=False), jax.random.key(0))
    singles.append(s.params)
  sizes = np.array([len(c["y"]) for c in data], np.float64)
  expected = jax.tree.map(
    lambda *xs: np.tensordot(sizes / sizes.sum(), np.stack([np.asarray(x) for x in xs]), 1), *singles
  )
  assert_trees_close(whole.params, expected, tol=1e-5)


def test_debug_backend_matches_vmap():
  cohort = make_cohort(clients(), BATCH, local_steps=3, shuffle=True, seed=3)
  state_vmap, _ = run_rounds(Engine("vmap"), cohort, rounds=1)
  state_debug, _ = run_rounds(Engine("debug"), cohort, rounds=1)
  assert_trees_close(state_vmap.params, state_debug.params, tol=1e-5)


def test_one_device_equals_four_devices():
  cohort = make_cohort(clients(), BATCH, local_epochs=1, shuffle=True, seed=1)
  state_1, d_1 = run_rounds(Engine("vmap", mesh=one_device_mesh()), cohort, rounds=3)
  engine_4 = Engine("vmap")
  assert engine_4.client_multiple == 4
  state_4, d_4 = run_rounds(engine_4, cohort, rounds=3)
  assert_trees_close(state_1.params, state_4.params)
  np.testing.assert_allclose(d_1[-1]["client_loss"], d_4[-1]["client_loss"], rtol=1e-6)


def test_chunked_equals_unchunked():
  cohort = make_cohort(clients(), BATCH, local_steps=2, shuffle=False)
  whole = Engine("vmap", mesh=one_device_mesh())
  chunked = Engine("vmap", mesh=one_device_mesh(), max_clients_per_chunk=2)
  state_whole, _ = run_rounds(whole, cohort)
  state_chunked, _ = run_rounds(chunked, cohort)
  assert chunked.stats.chunks == 2 * 4 and whole.stats.chunks == 2
  assert_trees_close(state_whole.params, state_chunked.params)


def test_memory_budget_splits_into_chunks():
  cohort = make_cohort(clients(), BATCH, local_steps=2, shuffle=False)
  engine = Engine("vmap", mesh=one_device_mesh(), memory_budget_bytes=2_000)
  state, _ = run_rounds(engine, cohort, rounds=1)
  assert engine.stats.chunks > 1
  state_ref, _ = run_rounds(Engine("vmap", mesh=one_device_mesh()), cohort, rounds=1)
  assert_trees_close(state.params, state_ref.params)


class _CompileLog(logging.Handler):
  def __init__(self):
    super().__init__()
    self.messages = []

  def emit(self, record):
    msg = record.getMessage()
    if "Compiling" in msg or "compiling" in msg:
      self.messages.append(msg)


def test_second_round_does_not_recompile():
  data = clients()
  model = models.logistic_regression(6, 3)
  engine = Engine("vmap")
  alg = algorithms.fedavg(model, optax.sgd(0.1), engine=engine)
  state = alg.init(model.init(jax.random.key(0)))
  # Different clients and shuffles each round, same bucket shapes.
  state, _ = alg.apply(state, make_cohort(data[:5], BATCH, local_steps=3, seed=0), jax.random.key(0))
  compiles = engine.stats.compiles
  handler = _CompileLog()
  logger = logging.getLogger("jax")
  logger.addHandler(handler)
  old_level = logger.level
  logger.setLevel(logging.DEBUG)
  keys = [jax.random.key(r) for r in range(3)]  # made outside the guard: they are host-to-device transfers
  try:
    # The hot loop may transfer only explicitly (cohort in, per-client scalars out).
    with jax.log_compiles(True), jax.transfer_guard("disallow"):
      for r in range(1, 3):
        cohort = make_cohort(data[r : r + 5], BATCH, local_steps=3, seed=r)
        state, _ = alg.apply(state, cohort, keys[r])
  finally:
    logger.removeHandler(handler)
    logger.setLevel(old_level)
  assert engine.stats.compiles == compiles
  assert handler.messages == []


def test_same_seed_same_bits():
  data = clients()
  out = []
  for _ in range(2):
    cohort = make_cohort(data, BATCH, local_epochs=1, shuffle=True, seed=7)
    # An explicit strategy: "auto" may choose differently between runs, changing the last bits.
    state, diags = run_rounds(Engine("vmap", strategy="vmap"), cohort, rounds=2, seed=11)
    out.append((state.params, diags[-1]["client_loss"]))
  jax.tree.map(lambda a, b: np.testing.assert_array_equal(np.asarray(a), np.asarray(b)), out[0][0], out[1][0])
  np.testing.assert_array_equal(out[0][1], out[1][1])
  other = make_cohort(data, BATCH, local_epochs=1, shuffle=True, seed=8)
  state_other, _ = run_rounds(Engine("vmap"), other, rounds=2, seed=11)
  assert not np.array_equal(
    np.asarray(state_other.params["Dense_0"]["kernel"]), np.asarray(out[0][0]["Dense_0"]["kernel"])
  )


@pytest.mark.parametrize("backend", ["vmap", "loop"])
def test_nonfinite_client_is_excluded_and_counted(backend):
  data = clients()
  poisoned = [dict(c) for c in data]
  poisoned[2] = {"x": np.full_like(data[2]["x"], np.nan), "y": data[2]["y"]}
  state_bad, diags = run_rounds(Engine(backend), make_cohort(poisoned, BATCH, local_steps=2, shuffle=False), rounds=1)
  without = data[:2] + data[3:]
  state_ref, _ = run_rounds(Engine(backend), make_cohort(without, BATCH, local_steps=2, shuffle=False), rounds=1)
  assert diags[0]["num_nonfinite"] == 1
  assert diags[0]["client_nonfinite"].tolist() == [False, False, True, False, False, False, False]
  assert np.isfinite(diags[0]["train_loss"])
  assert_trees_close(state_bad.params, state_ref.params)


def test_all_clients_nonfinite_leaves_model_unchanged():
  data = [{"x": np.full((4, 6), np.inf, np.float32), "y": np.zeros(4, np.int32)}] * 2
  model = models.logistic_regression(6, 3)
  alg = algorithms.fedadam(model, optax.sgd(0.1))
  state = alg.init(model.init(jax.random.key(0)))
  new_state, diags = alg.apply(state, make_cohort(data, BATCH, local_steps=1), jax.random.key(0))
  assert diags["num_nonfinite"] == 2 and int(new_state.round) == 1
  assert_trees_close(new_state.params, state.params, tol=0)


def test_debug_backend_names_the_failing_client():
  model = models.logistic_regression(6, 3)
  alg = algorithms.fedavg(model, optax.sgd(0.1), engine=Engine("debug"))
  program = alg.client_program

  def finish(shared, carry, num_examples):
    if float(num_examples) == 11:  # Python control flow on values: only the debug backend allows it
      raise FloatingPointError("boom")
    return program.finish(shared, carry, num_examples)

  failing = program._replace(finish=finish)
  cohort = make_cohort(clients(), BATCH, local_steps=1, client_ids=[f"c{i}" for i in range(7)])
  state = alg.init(model.init(jax.random.key(0)))
  with pytest.raises(ClientError, match=r"client 'c1'.*FloatingPointError: boom"):
    Engine("debug").run(failing, algorithms.Shared(state.params, state.round), cohort, jax.random.key(0))


def test_engine_rejects_bad_configuration():
  with pytest.raises(ValueError, match="backend"):
    Engine("pmap")
  with pytest.raises(ValueError, match="max_clients_per_chunk"):
    Engine(max_clients_per_chunk=0)
  bad_mesh = jax.make_mesh((4,), ("data",), axis_types=(jax.sharding.AxisType.Explicit,))
  with pytest.raises(ValueError, match="clients"):
    Engine(mesh=bad_mesh)


def test_femnist_cnn_runs_in_vmap_backend():
  rng = np.random.default_rng(0)
  data = [
    {"x": rng.integers(0, 255, (n, 28, 28), dtype=np.uint8), "y": rng.integers(0, 62, n).astype(np.int32)}
    for n in (3, 5)
  ]
  model = models.femnist_cnn(dense=32)
  alg = algorithms.fedavg(model, optax.sgd(0.05))
  state = alg.init(model.init(jax.random.key(0)))
  state, diags = alg.apply(state, make_cohort(data, 2, local_steps=2), jax.random.key(0))
  assert np.isfinite(diags["train_loss"]) and diags["num_nonfinite"] == 0


def test_scan_unroll_and_cpu_chunk_cap_do_not_change_results():
  cohort = make_cohort(clients(), BATCH, local_steps=3, shuffle=False)
  rolled, _ = run_rounds(Engine("vmap", scan_unroll=1), cohort, rounds=1)
  unrolled, _ = run_rounds(Engine("vmap", scan_unroll=True), cohort, rounds=1)
  assert_trees_close(rolled.params, unrolled.params)
  from fedjaxscale.engine import compiled

  old = compiled.CPU_LANES_PER_DEVICE
  compiled.CPU_LANES_PER_DEVICE = 1  # 7 lanes over 4 devices -> chunks of 4 lanes
  try:
    engine = Engine("vmap")
    capped, _ = run_rounds(engine, cohort, rounds=1)
  finally:
    compiled.CPU_LANES_PER_DEVICE = old
  assert engine.stats.chunks == 2
  assert_trees_close(rolled.params, capped.params)


def test_loop_backend_pads_packed_clients_to_their_own_bucket():
  cohort = make_cohort(clients(), BATCH, local_epochs=2, shuffle=False)
  assert cohort.parts[0].packed
  engine = Engine("loop")
  run_rounds(engine, cohort, rounds=1)
  lane_steps = cohort.parts[0].num_steps
  assert engine.stats.computed_example_steps < len(clients()) * lane_steps * BATCH
  assert engine.stats.padding_efficiency > 0.9


def test_a_cohort_size_that_repeats_runs_without_bucket_padding():
  """The first cohort of a program runs as its own lane count (100, not its bucket 104); a later
  cohort reuses a lane count already run that holds it within its bucket, else pads to the bucket;
  a size seen before compiles nothing; results equal a run that pads every cohort (chunks of 8)."""
  model = models.logistic_regression(6, 3)
  pool = clients(sizes=[6] * 100, seed=4)
  engine = Engine(strategy="vmap")
  alg = algorithms.fedavg(model, optax.sgd(0.1), engine=engine)
  state = alg.init(model.init(jax.random.key(0)))
  slots = []
  for n, seed in ((100, 0), (90, 1), (95, 2), (100, 3)):
    before = engine.stats.computed_example_steps
    cohort = make_cohort(pool[:n], BATCH, local_steps=2, seed=seed)
    state, diagnostics = alg.apply(state, cohort, jax.random.key(seed))
    slots.append((engine.stats.computed_example_steps - before) // (2 * BATCH))
  assert slots == [100, 96, 96, 100]  # 90 pads to its bucket, 96; 95 reuses 96
  assert engine.stats.compiles == 2
  padded = algorithms.fedavg(model, optax.sgd(0.1), engine=Engine(strategy="vmap", max_clients_per_chunk=8))
  other = padded.init(model.init(jax.random.key(0)))
  for n, seed in ((100, 0), (90, 1), (95, 2), (100, 3)):
    other, _ = padded.apply(other, make_cohort(pool[:n], BATCH, local_steps=2, seed=seed), jax.random.key(seed))
  assert_trees_close(state.params, other.params, 1e-5)
