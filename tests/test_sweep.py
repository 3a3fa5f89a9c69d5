"""Sweeps: a stacked (vmapped) group equals its points run alone; resume; the table; bad grids."""

import json
import pathlib
import subprocess
import sys

import jax
import numpy as np
import pytest

from fedjaxscale.training import ConfigError, stacked, train_and_evaluate
from fedjaxscale.training.checkpoint import Checkpointer
from fedjaxscale.training.outputs import read_metrics, read_timeline
from fedjaxscale.training.setup import build
from fedjaxscale.training.stacked_run import run_group
from fedjaxscale.training.sweep import groups, parse_grid, points, run_sweep
from tests.test_training import CONFIGS, load_config, without_wall

GRID = {"algorithm.client_lr": [0.03, 0.1], "algorithm.server_lr": [1.0, 0.5]}


def tiny(**overrides):
  base = dict(rounds=2, eval_every=1, checkpoint_every=1, clients_per_round=3)
  base.update(overrides)
  return load_config("synthetic", "small", **base)


def final_state(workdir, config):
  like = build(config, workdir).algorithm.init(build(config, workdir).model.init(jax.random.key(0)))
  ckpt = Checkpointer(pathlib.Path(workdir) / "checkpoints")
  state, _ = ckpt.restore(ckpt.latest_round(), like)
  ckpt.close()
  return state


def assert_close_records(a, b):
  assert len(a) == len(b)
  for x, y in zip(without_wall(a), without_wall(b)):
    assert x.keys() == y.keys()
    for k in x:
      if isinstance(x[k], float):
        assert x[k] == pytest.approx(y[k], rel=1e-5, abs=1e-6), k
      elif isinstance(x[k], dict):
        for kk in x[k]:
          assert x[k][kk] == pytest.approx(y[k][kk], rel=1e-5, abs=1e-6), (k, kk)
      else:
        assert x[k] == y[k], k


@pytest.fixture(scope="module")
def swept(tmp_path_factory):
  workdir = tmp_path_factory.mktemp("sweep")
  config = tiny(plots=True)
  rows = run_sweep(config, GRID, workdir, show_progress=False)
  return config, workdir, rows


def test_points_of_one_plan_form_one_group():
  config = tiny()
  pts = points(config, {**GRID, "seed": [0, 1]})
  assert len(pts) == 8
  assert sorted(len(g) for g in groups(pts)) == [4, 4]  # seed changes the plan
  assert [len(g) for g in groups(pts, stack=False)] == [1] * 8
  oort = tiny(**{"system.selection": "oort"})
  assert [len(g) for g in groups(points(oort, GRID))] == [1] * 4  # Oort learns from losses
  # A zero momentum has no optimizer state: zero and non-zero points form separate groups.
  momentum = points(config, {"algorithm.client_momentum": [0.0, 0.5, 0.9], "algorithm.server_momentum": [0.0, 0.9]})
  assert sorted(len(g) for g in groups(momentum)) == [1, 1, 2, 2]
  # What a stacked group does not carry runs alone: client states, DP, update encoders.
  for overrides in ({"algorithm.name": "scaffold"}, {"privacy.enabled": True}, {"compression.encoder": "topk"}):
    assert [len(g) for g in groups(points(tiny(**overrides), GRID))] == [1] * 4, overrides


# Two points that differ in every stackable field of their algorithm at once, run as one stacked
# group and each alone: client-side fields (learning rate, momentum, FedProx's mu, with mu = 0
# traced against a run alone that leaves the term out, the decayed lr's floor), server-side ones
# (lr, momentum, the adaptive moments, tau) and one only the initial state reads (v_0).
STACKED_CASES = {
  "fedprox": (
    {"algorithm.name": "fedprox"},
    {"algorithm.client_lr": [0.03, 0.1], "algorithm.mu": [0.0, 1.0], "algorithm.client_momentum": [0.5, 0.9]}
    | {"algorithm.server_momentum": [0.5, 0.9], "algorithm.server_lr": [1.0, 0.5]},
  ),
  "fedyogi": (
    {"algorithm.name": "fedyogi", "algorithm.client_lr_decay": 0.5, "algorithm.client_lr_decay_every": 1},
    {"algorithm.server_lr": [0.01, 0.03], "algorithm.beta1": [0.9, 0.5], "algorithm.beta2": [0.99, 0.9]}
    | {"algorithm.tau": [1e-3, 1e-2], "algorithm.initial_v": [0.0, 1e-4], "algorithm.client_lr_min": [0.02, 0.05]},
  ),
}


@pytest.mark.parametrize("case", sorted(STACKED_CASES))
def test_stacked_points_equal_their_runs_alone(tmp_path, case):
  overrides, hyper = STACKED_CASES[case]
  assert set(stacked.VMAPPABLE) == {f for _, h in STACKED_CASES.values() for f in h}  # every field, in one case
  # Deadline and partial work: ragged cohorts, stragglers, and rounds of different sizes.
  config = tiny(
    rounds=2, checkpoint_every=2, **overrides, **{"system.stragglers": "partial", "system.deadline_s": 120.0}
  )
  configs = [config.copy_and_resolve_references() for _ in range(2)]
  for c, h in zip(configs, range(2)):
    with c.unlocked():
      for field, values in hyper.items():
        section, name = field.split(".")
        c[section][name] = values[h]
  assert stacked.can_stack(configs[0]) and stacked.group_key(configs[0]) == stacked.group_key(configs[1])
  dirs = [tmp_path / "stacked" / str(h) for h in range(2)]
  run_group(
    configs, dirs, tmp_path / "stacked", {f: list(v) for f, v in hyper.items()}, resume=False, show_progress=False
  )
  for h, point_config in enumerate(configs):
    alone = tmp_path / f"alone{h}"
    train_and_evaluate(point_config, alone, show_progress=False)
    assert_close_records(read_metrics(dirs[h]), read_metrics(alone))
    assert all("eval" in r for r in read_metrics(dirs[h]))
    for key in ("round", "client", "status", "start", "finish"):
      np.testing.assert_array_equal(read_timeline(dirs[h])[key], read_timeline(alone)[key])
    a, b = final_state(dirs[h], point_config), final_state(alone, point_config)
    jax.tree.map(lambda x, y: np.testing.assert_allclose(np.asarray(x), np.asarray(y), rtol=1e-5, atol=1e-5), a, b)


def test_sweep_writes_every_file_and_the_table_equals_the_summaries(swept):
  config, workdir, rows = swept
  assert len(rows) == 4
  for name in ("sweep.json", "summary.csv", "summary.md", "compare/compare.csv", "compare/accuracy_vs_hours.png"):
    assert (workdir / name).stat().st_size > 0, name
  assert len(list((workdir / "tensorboard").rglob("events.out.tfevents.*"))) >= 4
  lines = (workdir / "summary.csv").read_text().splitlines()
  header = lines[0].split(",")
  for line, (name, overrides, _) in zip(lines[1:], points(config, GRID)):
    cells = dict(zip(header, line.split(",")))
    summary = json.loads((workdir / "points" / name / "summary.json").read_text())
    assert cells["point"] == name
    assert float(cells["final_accuracy"]) == summary["final_accuracy"]
    assert float(cells["best_accuracy"]) == summary["best_accuracy"]
    assert int(cells["clients_trained"]) == summary["clients_trained"]
    assert float(cells["algorithm.client_lr"]) == overrides["algorithm.client_lr"]
    for f in ("config.json", "metrics.jsonl", "timeline.csv", "availability.csv", "plots/accuracy_vs_round.png"):
      assert (workdir / "points" / name / f).exists(), f


def test_resumed_sweep_equals_an_uninterrupted_one(swept, tmp_path):
  config, full, _ = swept
  # Interrupted after round 1: run the first round, then drop the finished outputs.
  run_sweep(tiny(rounds=1, plots=True), GRID, tmp_path, show_progress=False)
  manifest = json.loads((tmp_path / "sweep.json").read_text())
  manifest["config"]["rounds"] = 2
  (tmp_path / "sweep.json").write_text(json.dumps(manifest, indent=1) + "\n")
  for p in (tmp_path / "points").iterdir():
    (p / "summary.json").unlink()
  run_sweep(config, GRID, tmp_path, resume=True, show_progress=False)
  for name, _, _ in points(config, GRID):
    assert without_wall(read_metrics(tmp_path / "points" / name)) == without_wall(read_metrics(full / "points" / name))


def test_a_sweep_needs_resume_or_overwrite(swept):
  config, workdir, _ = swept
  with pytest.raises(ConfigError, match="already holds a sweep"):
    run_sweep(config, GRID, workdir, show_progress=False)


@pytest.mark.parametrize(
  "pairs, message",
  [
    ([("algorithm.client_lr", "0.1,fast")], "'fast' is not a float"),
    ([("seed", "0,1.5")], "'1.5' is not an int"),
    ([("algorithm.no_such", "1,2")], "algorithm.no_such: is not a known config field"),
    ([("seed", "")], "needs a comma-separated list"),
    ([], "the sweep grid is empty"),
  ],
)
def test_bad_grid_is_refused(pairs, message):
  with pytest.raises(ConfigError, match=message):
    parse_grid(tiny(), pairs)


@pytest.mark.parametrize(
  "args, message",
  [
    # A bad value (parse_grid) and an empty grid (run_sweep); an unknown field takes the bad
    # value's path (test_bad_grid_is_refused checks its message).
    (["--sweep.algorithm.client_lr=0.1,x"], "is not a float"),
    ([], "the sweep grid is empty"),
  ],
)
def test_cli_sweep_bad_input_exits_2(tmp_path, args, message):
  out = subprocess.run(
    [
      sys.executable,
      "-m",
      "fedjaxscale.main",
      "sweep",
      f"--config={CONFIGS / 'synthetic.py'}:small",
      f"--workdir={tmp_path / 'sweep'}",
      *args,
    ],
    capture_output=True,
    text=True,
    timeout=120,
  )
  assert out.returncode == 2, out.stderr[-2000:]
  assert message in out.stderr and "Traceback" not in out.stderr
  assert not (tmp_path / "sweep").exists()
