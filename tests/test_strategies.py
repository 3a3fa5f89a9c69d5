"""Execution strategies, autotuning and device-resident data: every way of running a device's lanes
gives the ``loop`` backend's numbers; the choice is recorded and costs no compile in later rounds;
resident gathers equal host gathers bit for bit."""

import functools
import logging
import re

import jax
import numpy as np
import optax
import pytest

from fedjaxscale import algorithms, models
from fedjaxscale.algorithms import Shared
from fedjaxscale.data import gather_cohort, make_cohort
from fedjaxscale.data.dataset import write_dataset_from_clients
from fedjaxscale.engine import Engine, autotune
from fedjaxscale.engine.strategies import Strategy, candidates, conv_module, map_lanes, parse_strategy
from tests.test_models_zoo import TINY, image_examples

BATCH = 2
STEPS = 2
# 5 clients (map:2 has a remainder lane); in epochs mode 1 or 2 steps each, so the loop backend
# compiles two step buckets and the packed cohort shares lanes.
SIZES = (2, 4, 2, 4, 3)


def one_device_mesh():
  return jax.make_mesh((1,), ("clients",), axis_types=(jax.sharding.AxisType.Explicit,), devices=jax.devices()[:1])


def tabular(n, rng, features=6, classes=3):
  return {"x": rng.normal(size=(n, features)).astype(np.float32), "y": rng.integers(0, classes, n).astype(np.int32)}


ZOO = {
  "logistic_regression": (lambda: models.logistic_regression(6, 3), tabular),
  "mlp": (lambda: models.mlp(6, 3, hidden=(8,)), tabular),
  "femnist_cnn": (lambda: models.femnist_cnn(num_classes=3, dense=8), lambda n, rng: image_examples(n, rng, side=28)),
  **TINY,
}


# Models whose every strategy would cost CI minutes of compiling: they get the strategies that
# cover the code paths (map:2 runs both sequential groups and a vmapped remainder; +patches the
# patches convolution under vmap and under map); the small models get every strategy.
HEAVY = ("resnet18_gn", "speech_cnn", "shakespeare_leaf", "shakespeare_seq", "stackoverflow")
CONV = ("femnist_cnn", "resnet18_gn", "speech_cnn")


# Packing is the same code for every model: the heavy ones but Shakespeare's LEAF LSTM (packed
# sequences) are checked in local-steps mode only.
STEPS_ONLY = ("resnet18_gn", "speech_cnn", "shakespeare_seq", "stackoverflow")


def strategies_for(name, mode):
  patches = conv_module() is not None and name in CONV
  if name == "resnet18_gn":  # the deepest: one compile (the patches convolution under vmap)
    return ["vmap+patches"]
  if name in HEAVY:  # one strategy each: map:2 (its groups and remainder), patches under map and vmap
    if patches:
      return ["map:2+patches"] if mode == "steps" else ["vmap+patches"]
    return ["map:2"]
  # Packed lanes are fewer: map:2 covers both its sequential groups and its vmapped remainder.
  out = ["vmap", "map", "map:2"] if mode == "steps" else ["vmap", "map:2"]
  if patches:
    # Packed, the CNN checks the patches convolution under vmap only (the small models check
    # every strategy packed; each CNN strategy is a compile of its own).
    out = out + ["vmap+patches", "map+patches"] if mode == "steps" else ["map:2", "vmap+patches"]
  return out


@functools.cache
def setup(name):
  factory, make_examples = ZOO[name]
  model = factory()
  rng = np.random.default_rng(0)
  data = [make_examples(n, rng) for n in SIZES]
  alg = algorithms.fedavg(model, optax.sgd(0.1), engine=Engine("loop"))
  params = jax.jit(model.init)(jax.random.key(0, impl="rbg"))
  return alg.client_program, Shared(params, np.int32(0)), data


def cohort_for(data, mode):
  if mode == "steps":
    return make_cohort(data, BATCH, local_steps=STEPS, shuffle=True, seed=1)
  cohort = make_cohort(data, BATCH, local_epochs=1, shuffle=True, seed=1)
  assert cohort.parts[0].packed
  return cohort


def mean_update(aggregate):
  return jax.tree.map(lambda u: np.asarray(u) / float(aggregate.weight_sum), aggregate.update_sum)


def assert_same(a, b, tol=1e-5):
  (agg_a, per_a), (agg_b, per_b) = a, b
  jax.tree.map(
    lambda x, y: np.testing.assert_allclose(x, y, rtol=tol, atol=tol), mean_update(agg_a), mean_update(agg_b)
  )
  np.testing.assert_allclose(float(agg_a.weight_sum), float(agg_b.weight_sum), rtol=1e-6)
  assert set(per_a) == set(per_b)
  for k in per_a:
    np.testing.assert_allclose(per_a[k], per_b[k], rtol=tol, atol=tol, err_msg=k)


@pytest.mark.parametrize(
  "name,mode",
  [(n, m) for n in sorted(ZOO) for m in ("steps", "epochs") if not (n in STEPS_ONLY and m == "epochs")],
)
def test_every_strategy_equals_the_loop_backend(name, mode):
  program, shared, data = setup(name)
  cohort = cohort_for(data, mode)
  rng = jax.random.key(3)
  want = Engine("loop").run(program, shared, cohort, rng)
  # The heavy models' local steps as one rolled scan body: unrolled (the CPU default for short
  # scans) their compile takes up to 1.6x as long; the small models check the unrolled scans.
  unroll = 1 if name in HEAVY else None
  for strategy in strategies_for(name, mode):
    engine = Engine(mesh=one_device_mesh(), strategy=strategy, scan_unroll=unroll)
    got = engine.run(program, shared, cohort, rng)
    assert engine.strategy_choices[0]["chosen"] == str(parse_strategy(strategy))
    try:
      assert_same(got, want)
    except AssertionError as e:
      raise AssertionError(f"strategy {strategy}: {e}") from None


@pytest.mark.parametrize("strategy", ["map", "map:2", "map:3"])
def test_one_device_equals_four_devices(strategy):
  program, shared, data = setup("logistic_regression")
  data = data + data[:4]  # 9 clients; steps mode: 12 lanes on 4 devices, 3 a device (map:2 has a remainder)
  for mode in ("steps", "epochs"):
    cohort = cohort_for(data, mode)
    one = Engine(mesh=one_device_mesh(), strategy=strategy).run(program, shared, cohort, jax.random.key(1))
    four = Engine(strategy=strategy)
    assert four.client_multiple == 4
    assert_same(one, four.run(program, shared, cohort, jax.random.key(1)), tol=1e-6)


def test_strategy_grammar():
  assert parse_strategy("auto") is None
  assert parse_strategy("vmap") == Strategy("vmap")
  assert parse_strategy("map") == Strategy("map", 1)
  assert parse_strategy("map:4") == Strategy("map", 4)
  assert str(parse_strategy("map:4+lax")) == "map:4+lax"
  assert str(parse_strategy("map:1")) == "map"
  for bad in ("pmap", "vmap:2", "map:0", "map:", "map:x", "vmap+winograd", "", "MAP", None):
    with pytest.raises(ValueError, match=re.escape(repr(bad))):
      parse_strategy(bad)
  with pytest.raises(ValueError, match="'vmap:4'"):
    Engine(strategy="vmap:4")
  with pytest.raises(ValueError, match="'map:-1'"):
    Engine("loop", strategy="map:-1")


def test_candidates_are_short_and_applicable():
  cpu = [str(s) for s in candidates("cpu", 16, has_conv=False)]
  assert cpu == ["vmap", "map", "map:4"]
  assert [str(s) for s in candidates("cpu", 1, has_conv=False)] == ["vmap"]
  assert [str(s) for s in candidates("cpu", 3, has_conv=False)] == ["vmap", "map"]  # map:4 would be vmap
  assert [str(s) for s in candidates("gpu", 64, has_conv=False)] == ["vmap", "map:8"]
  with_conv = [str(s) for s in candidates("cpu", 16, has_conv=True)]
  if conv_module() is not None:
    assert with_conv == ["vmap", "vmap+patches", "map+patches", "map:4+patches"]
  else:  # a sequential map of lax convolutions is far too slow on CPU to be worth timing
    assert with_conv == ["vmap"]


def test_map_lanes_sums_and_stacks_like_vmap():
  xs = np.arange(7 * 3, dtype=np.float32).reshape(7, 3)

  def lane(x):
    return (x * 2.0).sum(), {"m": x[0]}, x[1] > 10

  zero = np.float32(0)
  want = map_lanes(lane, Strategy("vmap"), xs, zero)
  for s in (Strategy("map", 1), Strategy("map", 2), Strategy("map", 3), Strategy("map", 7), Strategy("map", 9)):
    got = jax.jit(lambda x, s=s: map_lanes(lane, s, x, zero))(xs)
    jax.tree.map(np.testing.assert_array_equal, got, want)


class _CompileLog(logging.Handler):
  def __init__(self):
    super().__init__()
    self.messages = []

  def emit(self, record):
    if "ompiling" in record.getMessage():
      self.messages.append(record.getMessage())


def test_autotune_records_its_choice_keeps_results_and_compiles_nothing_in_later_rounds(monkeypatch):
  monkeypatch.setattr(autotune, "AUTOTUNE_MIN_SECONDS", 0.0)  # tune even this tiny chunk
  program, shared, data = setup("logistic_regression")
  engine = Engine()  # strategy="auto"; 5 clients -> 8 lanes, 2 a device: candidates vmap and map
  assert engine.strategy == "auto"
  cohort = cohort_for(data, "steps")
  got = engine.run(program, shared, cohort, jax.random.key(0))
  (choice,) = engine.strategy_choices
  assert choice["shape"] == {
    "lanes": 8,
    "steps": STEPS,
    "batch": BATCH,
    "packed": False,
    "devices": 4,
    "resident": False,
  }
  assert set(choice["candidates"]) == {"vmap", "map"} and choice["chosen"] in choice["candidates"]
  assert all(s > 0 for s in choice["candidates"].values())
  assert engine.stats.compiles == 2  # one per candidate
  assert_same(got, Engine("loop").run(program, shared, cohort, jax.random.key(0)))
  engine.strategy_choices[0]["chosen"] = "changed"  # a copy: the engine's record is not changed
  assert engine.strategy_choices[0]["chosen"] in ("vmap", "map")

  handler, logger = _CompileLog(), logging.getLogger("jax")
  logger.addHandler(handler)
  old_level = logger.level
  logger.setLevel(logging.DEBUG)
  keys = [jax.random.key(r) for r in range(3)]
  try:
    with jax.log_compiles(True), jax.transfer_guard("disallow"):
      for r in range(1, 3):
        engine.run(program, shared, make_cohort(data, BATCH, local_steps=STEPS, seed=r), keys[r])
  finally:
    logger.removeHandler(handler)
    logger.setLevel(old_level)
  assert engine.stats.compiles == 2 and handler.messages == []
  assert len(engine.strategy_choices) == 1


def test_another_lane_count_of_a_timed_program_reuses_its_choice(monkeypatch):
  monkeypatch.setattr(autotune, "AUTOTUNE_MIN_SECONDS", 0.0)
  # map wins the timing (not vmap, the memory probe's default): the winner alone compiles after.
  monkeypatch.setattr(autotune, "_time", lambda c, *a: 1.0 if c.strategy.lanes == "map" else 2.0)
  program, shared, data = setup("logistic_regression")
  engine = Engine()
  engine.run(program, shared, cohort_for(data, "steps"), jax.random.key(0))  # 8 lanes: timed
  (first,) = engine.strategy_choices
  compiles = engine.stats.compiles
  more = make_cohort(data * 3, BATCH, local_steps=STEPS, seed=2)  # 15 clients: another lane count
  got = engine.run(program, shared, more, jax.random.key(1))
  second = engine.strategy_choices[1]
  assert second["shape"]["lanes"] != first["shape"]["lanes"] and second["timed_at"] == first["shape"]
  assert second["chosen"] == first["chosen"] == "map" and second["candidates"] == {}
  assert engine.stats.compiles == compiles + 1  # the winner only, not every candidate again
  assert_same(got, Engine("loop").run(program, shared, more, jax.random.key(1)))
  # A resumed run adopts it like a timed choice.
  resumed = Engine()
  resumed.adopt_strategy_choices(engine.strategy_choices)
  resumed.run(program, shared, more, jax.random.key(1))
  assert resumed.strategy_choices[0]["adopted"] and resumed.strategy_choices[0]["chosen"] == first["chosen"]


def test_autotune_leaves_quick_chunks_at_vmap(monkeypatch):
  monkeypatch.setattr(autotune, "AUTOTUNE_MIN_SECONDS", 1e9)
  program, shared, data = setup("logistic_regression")
  engine = Engine()
  engine.run(program, shared, cohort_for(data, "steps"), jax.random.key(0))
  (choice,) = engine.strategy_choices
  assert choice["chosen"] == "vmap" and list(choice["candidates"]) == ["vmap"]
  assert engine.stats.compiles == 1


def test_autotune_judges_a_quick_candidate_by_its_warm_run(monkeypatch):
  """A first run pays one-off costs: a candidate whose first run is quick runs again, and counts
  its best. vmap cold above the tuning floor but warm below it is not tuned; map's cold run, over
  twice vmap's, still gets its second run, and wins with it."""
  monkeypatch.setattr(autotune, "AUTOTUNE_MIN_SECONDS", 0.05)
  program, shared, data = setup("logistic_regression")
  runs = {}

  def scripted(times):
    def fake(c, *a):
      name = str(c.strategy)
      runs[name] = runs.get(name, 0) + 1
      return times[name][runs[name] - 1]

    return fake

  monkeypatch.setattr(autotune, "_time", scripted({"vmap": [0.07, 0.02]}))
  engine = Engine()
  engine.run(program, shared, cohort_for(data, "steps"), jax.random.key(0))
  (choice,) = engine.strategy_choices
  assert choice["chosen"] == "vmap" and choice["candidates"] == {"vmap": 0.02} and runs == {"vmap": 2}
  assert engine.stats.compiles == 1

  runs.clear()
  monkeypatch.setattr(autotune, "_time", scripted({"vmap": [0.1, 0.09], "map": [0.21, 0.05]}))
  engine = Engine()
  engine.run(program, shared, cohort_for(data, "steps"), jax.random.key(0))
  (choice,) = engine.strategy_choices
  assert choice["candidates"] == {"vmap": 0.09, "map": 0.05} and choice["chosen"] == "map"
  assert runs == {"vmap": 2, "map": 2}


def test_explicit_strategy_wins_and_is_recorded():
  program, shared, data = setup("logistic_regression")
  engine = Engine(strategy="map:2")
  engine.run(program, shared, cohort_for(data, "epochs"), jax.random.key(0))
  (choice,) = engine.strategy_choices
  assert choice["chosen"] == "map:2" and choice["candidates"] == {} and choice["shape"]["packed"]
  assert engine.stats.compiles == 1
  assert Engine("loop", strategy="map").strategy_choices == []


def test_adopted_choices_run_the_recorded_strategy_without_timing():
  """A resumed run adopts the strategies its first process chose by timing (from the
  checkpoint): the same programs, so the same bits as a run that never stopped."""
  program, shared, data = setup("logistic_regression")
  cohort = cohort_for(data, "epochs")
  first = Engine(strategy="map:2")
  expected, _ = first.run(program, shared, cohort, jax.random.key(0))
  (choice,) = first.strategy_choices
  timed = dict(choice, candidates={"vmap": 2.0, "map:2": 1.0})  # as if auto had timed and chosen map:2
  resumed = Engine()  # auto
  resumed.adopt_strategy_choices([timed])
  got, _ = resumed.run(program, shared, cohort, jax.random.key(0))
  (record,) = resumed.strategy_choices
  assert record["chosen"] == "map:2" and record["adopted"] and record["candidates"] == {}
  for a, b in zip(jax.tree.leaves(expected), jax.tree.leaves(got)):
    np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
  # An explicit strategy still wins over an adopted one.
  explicit = Engine(strategy="vmap")
  explicit.adopt_strategy_choices([timed])
  explicit.run(program, shared, cohort, jax.random.key(0))
  assert explicit.strategy_choices[0]["chosen"] == "vmap"


def dataset(tmp_path, data):
  return write_dataset_from_clients(tmp_path / "train", [(f"c{i}", c) for i, c in enumerate(data)])


@pytest.mark.parametrize("mode", ["steps", "epochs"])
def test_resident_gather_equals_host_gather_bit_for_bit(tmp_path, mode):
  model = models.logistic_regression(6, 3)
  rng = np.random.default_rng(0)
  on_disk = dataset(tmp_path, [tabular(n, rng) for n in (3, 5, 2, 7, 4, 9)])
  # The same dataset with its features in RAM: not memory-mapped, so not made resident by itself.
  in_ram = on_disk.subset(range(on_disk.num_clients))
  outs = []
  for resident in (False, True):
    engine = Engine(strategy="vmap")
    train = on_disk if resident else in_ram  # memory-mapped features become resident on first use
    alg = algorithms.fedavg(model, optax.sgd(0.1), engine=engine)
    state = alg.init(model.init(jax.random.key(0)))
    losses = []
    for r in range(2):
      kw = dict(local_steps=3) if mode == "steps" else dict(local_epochs=1)
      cohort = gather_cohort(train, [r, r + 2, r + 3, 5], BATCH, seed=r, **kw)
      state, diags = alg.apply(state, cohort, jax.random.key(r))
      losses.append(diags["client_loss"])
    assert [c["shape"]["resident"] for c in engine.strategy_choices] == [resident] * len(engine.strategy_choices)
    outs.append((state.params, losses))
  jax.tree.map(lambda a, b: np.testing.assert_array_equal(np.asarray(a), np.asarray(b)), outs[0], outs[1])


def test_resident_features_that_do_not_fit_stay_on_the_host(tmp_path):
  rng = np.random.default_rng(0)
  train = dataset(tmp_path, [tabular(n, rng) for n in (3, 5)])
  assert Engine(memory_budget_bytes=1_000).make_resident(train.features) is False
  # Nor when a cohort reads them: the round runs from the host, as before.
  small = Engine(memory_budget_bytes=1_000, strategy="vmap")
  program = algorithms.fedavg(models.logistic_regression(6, 3), optax.sgd(0.1), engine=small).client_program
  params = models.logistic_regression(6, 3).init(jax.random.key(0))
  small.run(
    program,
    Shared(params, jax.numpy.zeros((), jax.numpy.int32)),
    gather_cohort(train, [0, 1], BATCH, local_steps=1),
    jax.random.key(0),
  )
  assert [c["shape"]["resident"] for c in small.strategy_choices] == [False]
  assert Engine("loop").make_resident(train.features) is False
  engine = Engine()
  assert engine.make_resident(train.features) and engine.make_resident(train.features)
