"""compare: figures and a table over runs; seeds of one config as one curve; bad directories."""

import json
import subprocess
import sys

import pytest

from fedjaxscale.training import train_and_evaluate
from fedjaxscale.training.compare import FIGURES, CompareError, compare, group_by_seed, load_run, read_csv
from tests.test_training import load_config


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
  root = tmp_path_factory.mktemp("runs")
  dirs = []
  for name, seed, lr in (("a0", 0, 0.1), ("a1", 1, 0.1), ("b0", 0, 0.3)):
    config = load_config(
      "synthetic",
      "small",
      seed=seed,
      rounds=2,
      eval_every=1,
      checkpoint_every=0,
      eval_train=True,  # the global training loss: its figure is drawn
      **{"algorithm.client_lr": lr},
    )
    train_and_evaluate(config, root / name, show_progress=False)
    dirs.append(root / name)
  return root, dirs


def test_compare_writes_the_figures_and_a_table_equal_to_the_summaries(runs):
  root, dirs = runs
  result = compare(dirs, root / "cmp")
  for name in (*FIGURES, "global_train_loss_vs_round.png"):
    assert (root / "cmp" / name).stat().st_size > 0, name
  rows = read_csv(root / "cmp" / "compare.csv")
  assert [r["run"] for r in rows] == [str(d) for d in dirs]
  for row, d in zip(rows, dirs):
    summary = json.loads((d / "summary.json").read_text())
    for key in ("best_accuracy", "final_accuracy", "time_to_target_hours", "wall_s", "clients_trained", "rounds"):
      assert row[key] == summary[key], key
  md = (root / "cmp" / "compare.md").read_text()
  assert "Mean (min-max) over seeds" in md and md.count("\n| client_lr=0.1") == 3  # two runs + the mean row
  assert result["table"][0]["label"] == "client_lr=0.1"


def test_seeds_of_one_config_form_one_group(runs):
  _, dirs = runs
  groups = group_by_seed([load_run(d) for d in dirs])
  assert [[r.name for r in g] for g in groups] == [["a0", "a1"], ["b0"]]
  assert [g[0].label for g in groups] == ["client_lr=0.1", "client_lr=0.3"]


def test_a_directory_without_a_run_is_refused(tmp_path, runs):
  _, dirs = runs
  (tmp_path / "empty").mkdir()
  with pytest.raises(CompareError, match="holds no run"):
    compare([dirs[0], tmp_path / "empty"], tmp_path / "out")
  assert not (tmp_path / "out").exists()
  out = subprocess.run(
    [sys.executable, "-m", "fedjaxscale.main", "compare", str(tmp_path / "empty"), "--out", str(tmp_path / "out")],
    capture_output=True,
    text=True,
    timeout=120,
  )
  assert out.returncode == 2
  assert f"{tmp_path / 'empty'} holds no run" in out.stderr and "Traceback" not in out.stderr
  assert len(out.stderr.strip().splitlines()) == 1
