"""Bounded compilation: a run's cohort shapes are fixed at its start, so sync and async runs compile
a handful of training programs; the persistent cache makes a second identical run compile nothing;
``engine.strategy`` is checked at setup."""

import json
import os
import subprocess
import sys

import numpy as np
import pytest

from fedjaxscale.data import make_cohort, plan_shapes, steps_for
from fedjaxscale.data.cohort import pack_lanes
from fedjaxscale.training import ConfigError, train_and_evaluate
from fedjaxscale.training.setup import check_config, parse_strategy
from tests.test_training import CONFIGS, load_config


def heavy_tailed_steps(n=500, seed=0):
  sizes = np.minimum(np.random.default_rng(seed).pareto(1.2, n) * 20 + 3, 1000).astype(np.int64)
  return steps_for(sizes, 10, local_epochs=1.0)


@pytest.mark.parametrize("counts", [[20], range(1, 31), range(20, 27)])
@pytest.mark.parametrize("multiple", [1, 4])
def test_every_cohort_of_the_planned_sizes_fits_a_planned_shape(counts, multiple):
  steps = heavy_tailed_steps()
  shapes = plan_shapes(steps, counts, lane_multiple=multiple)
  assert 1 <= len(shapes) <= 4 and all(lanes % multiple == 0 for lanes, _ in shapes)
  rng = np.random.default_rng(1)
  for _ in range(200):  # cohorts the planner never drew
    members = rng.choice(len(steps), int(rng.choice(list(counts))), replace=False)
    _, _, lanes, length = pack_lanes(steps[members], lane_multiple=multiple, shapes=shapes)
    assert (lanes, length) in shapes


def test_fixed_steps_plan_lane_counts_only():
  shapes = plan_shapes(np.full(300, 5), range(1, 31))
  assert {length for _, length in shapes} == {5} and max(lanes for lanes, _ in shapes) >= 30


def test_a_fixed_shape_set_is_used_and_clients_keep_their_data():
  rng = np.random.default_rng(0)
  data = [{"x": rng.normal(size=(n, 2)).astype(np.float32)} for n in (3, 9, 17, 4)]
  free = make_cohort(data, 4, local_epochs=1, shuffle=False)
  fixed = make_cohort(data, 4, local_epochs=1, shuffle=False, shapes=[(2, 8), (8, 6)])
  assert (fixed.parts[0].num_lanes, fixed.parts[0].num_steps) == (2, 8)
  assert fixed.real_example_steps == free.real_example_steps == 33
  # Each client's examples, in order, are the same whatever the layout.
  for cohort in (free, fixed):
    part = cohort.parts[0]
    got = [part.gather()["x"][part.owner == k][part.mask[part.owner == k]] for k in range(4)]
    for k, ex in enumerate(data):
      np.testing.assert_array_equal(got[k], ex["x"])
  # None of the set fits (the longest client needs 5 steps): a fresh shape, as without a set.
  assert make_cohort(data, 4, local_epochs=1, shapes=[(8, 4)]).parts[0].num_steps >= 5


@pytest.mark.parametrize(
  "name, overrides",
  [
    ("synthetic", {"rounds": 6}),
    ("fedbuff", {"rounds": 8, "system.max_concurrency": 12}),
    ("synthetic_fedprox_stragglers", {}),
  ],
)
def test_a_run_compiles_within_its_bound(tmp_path, name, overrides):
  variant = "fedprox,small" if name == "synthetic_fedprox_stragglers" else "small"
  summary = train_and_evaluate(load_config(name, variant, **overrides), tmp_path, show_progress=False)
  engine = json.loads((tmp_path / "engine.json").read_text())
  assert engine == json.loads(json.dumps(summary["engine"]))
  shapes = [tuple(s) for s in engine["cohort_shapes"]]
  assert 1 <= len(shapes) <= 4 and engine["compile_bound"] == 2 * len(shapes)
  assert 1 <= engine["compiles"] <= engine["compile_bound"]
  assert {tuple(s) for s in engine["lane_shapes"]} <= set(shapes)
  assert engine["strategy"] == "auto" and isinstance(engine["strategy_choices"], list)


def _run_cli(workdir, cache_dir, *flags):
  env = dict(os.environ, JAX_PLATFORMS="cpu", FEDJAXSCALE_COMPILATION_CACHE_DIR=str(cache_dir))
  out = subprocess.run(
    [
      sys.executable,
      "-m",
      "fedjaxscale.main",
      f"--config={CONFIGS / 'synthetic.py'}:small",
      f"--workdir={workdir}",
      "--config.rounds=2",
      "--config.checkpoint_every=0",
      "--config.plots=False",
      "--overwrite",
      *flags,
    ],
    env=env,
    capture_output=True,
    text=True,
    timeout=300,
  )
  assert out.returncode == 0, out.stderr[-3000:]
  return json.loads((workdir / "engine.json").read_text())["compilation_cache"]


def test_second_identical_run_compiles_nothing_new(tmp_path):
  cache = tmp_path / "cache"
  first = _run_cli(tmp_path / "a", cache)
  second = _run_cli(tmp_path / "b", cache)
  assert first["enabled"] and first["dir"] == str(cache)
  assert first["cache_misses"] > 0 and any(cache.iterdir())
  assert second["cache_misses"] == 0 and second["cache_hits"] == first["cache_requests"]
  off = _run_cli(tmp_path / "c", tmp_path / "unused", "--config.engine.compilation_cache=False")
  assert not off["enabled"] and off["cache_requests"] == 0 and not (tmp_path / "unused").exists()


@pytest.mark.parametrize("strategy", ["auto", "vmap", "map", "map:8", "vmap+lax", "map:16+lax"])
def test_strategy_grammar_accepts(strategy):
  assert parse_strategy(strategy) is not None and parse_strategy("map:4+patches") == ("map:4", "patches")
  check_config(load_config("synthetic", "small", **{"engine.strategy": strategy}))


@pytest.mark.parametrize("strategy", ["", "pmap", "map:", "map:0", "map:-2", "vmap+", "patches", "map:8+patch", "Auto"])
def test_strategy_grammar_refuses(strategy):
  with pytest.raises(ConfigError, match=r"config\.engine\.strategy: "):
    check_config(load_config("synthetic", "small", **{"engine.strategy": strategy}))


def test_bad_strategy_exits_2_before_anything_is_written(tmp_path):
  env = dict(os.environ, JAX_PLATFORMS="cpu")
  workdir = tmp_path / "run"
  out = subprocess.run(
    [
      sys.executable,
      "-m",
      "fedjaxscale.main",
      f"--config={CONFIGS / 'synthetic.py'}:small",
      f"--workdir={workdir}",
      "--config.engine.strategy=map:0",
    ],
    env=env,
    capture_output=True,
    text=True,
    timeout=120,
  )
  assert out.returncode == 2 and "engine.strategy" in out.stderr and "Traceback" not in out.stderr
  assert not workdir.exists()


def test_unusable_cache_dir_is_refused_before_anything_is_written(tmp_path):
  blocker = tmp_path / "a_file"
  blocker.write_text("")
  config = load_config("synthetic", "small", **{"engine.compilation_cache_dir": str(blocker / "cache")})
  with pytest.raises(ConfigError, match=r"config\.engine\.compilation_cache_dir: "):
    train_and_evaluate(config, tmp_path / "run", show_progress=False)
  assert not (tmp_path / "run").exists()


@pytest.mark.parametrize(
  "overrides, sizes, most",
  [
    ({}, (4, 4), 4),  # K exactly
    ({"system.mode": "async", "system.max_concurrency": 12}, (1, 4), 12),  # FedBuff groups; all in flight at most
    ({"system.stragglers": "partial"}, (4, 6), 6),  # K, plus up to ceil(1.3 K) - K stragglers
    ({"system.deadline_s": 60.0}, (1, 6), 6),  # whoever finishes by the deadline
  ],
)
def test_cohort_sizes_follow_the_round_semantics(overrides, sizes, most):
  from fedjaxscale.training.loop import cohort_sizes

  planned, largest = cohort_sizes(load_config("synthetic", "small", **overrides))
  assert (planned.start, planned.stop - 1) == sizes and largest == most
