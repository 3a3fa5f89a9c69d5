"""End-to-end runs of the experiment configs (small variants): outputs, resume, kill -9, bad input."""

import importlib.util
import json
import os
import pathlib
import signal
import subprocess
import sys
import time

import jax
import numpy as np
import pytest

from fedjaxscale.data import write_dataset
from fedjaxscale.training import ConfigError, train_and_evaluate
from fedjaxscale.training.checkpoint import Checkpointer
from fedjaxscale.training.outputs import read_metrics, read_timeline

ROOT = pathlib.Path(__file__).resolve().parents[1]
CONFIGS = ROOT / "experiments" / "configs"


def load_config(name, variant=None, **overrides):
  """A shipped config with ``overrides``; plots are off unless asked for (drawing them costs seconds a run)."""
  spec = importlib.util.spec_from_file_location(name, CONFIGS / f"{name}.py")
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  config = module.get_config(variant)
  config.plots = False
  for key, value in overrides.items():
    node = config
    *path, last = key.split(".")
    for part in path:
      node = node[part]
    node[last] = value
  return config


def final_params(workdir, state_like):
  ckpt = Checkpointer(pathlib.Path(workdir) / "checkpoints")
  state, host = ckpt.restore(ckpt.latest_round(), state_like)
  ckpt.close()
  return state, host


def without_wall(records):
  """Round records less their wall-clock measurements (the only part two runs may differ in)."""
  return [{k: v for k, v in r.items() if k not in ("wall_s", "timing")} for r in records]


@pytest.fixture(scope="module")
def default_run(tmp_path_factory):
  workdir = tmp_path_factory.mktemp("default")
  config = load_config("synthetic", "small", plots=True)
  summary = train_and_evaluate(config, workdir, show_progress=False)
  return config, workdir, summary


def test_default_run_writes_every_output(default_run):
  config, workdir, summary = default_run
  for name in ("config.json", "metrics.jsonl", "timeline.csv", "availability.csv", "summary.json"):
    assert (workdir / name).stat().st_size > 0, name
  assert any((workdir / "tensorboard").iterdir())
  pngs = sorted(p.name for p in (workdir / "plots").glob("*.png"))
  assert {
    "accuracy_vs_round.png",
    "accuracy_vs_hours.png",
    "round_duration_hist.png",
    "gantt.png",
    "online_clients.png",
  } <= set(pngs)
  records = read_metrics(workdir)
  assert [r["round"] for r in records] == [1, 2, 3, 4]
  for r in records:
    for key in (
      "clock_s",
      "wall_s",
      "selected",
      "aggregated",
      "stragglers",
      "dropped",
      "train_loss",
      "bytes_down",
      "bytes_up",
    ):
      assert key in r, key
    assert set(r["timing"]) == {"plan_s", "gather_s", "engine_s", "eval_s"}
    assert r["aggregated"] <= config.clients_per_round <= r["selected"]
  assert [("eval" in r) for r in records] == [False, True, False, True]
  assert 0 <= records[-1]["eval"]["accuracy"] <= 1
  clocks = [r["clock_s"] for r in records]
  assert clocks == sorted(clocks) and clocks[0] > 0
  timeline = read_timeline(workdir)
  assert set(np.unique(timeline["round"])) == {1, 2, 3, 4}
  assert np.all(timeline["finish"] >= timeline["start"])
  saved = json.loads((workdir / "config.json").read_text())
  assert saved["clients_per_round"] == config.clients_per_round
  assert summary["rounds"] == 4 and summary["final_accuracy"] == records[-1]["eval"]["accuracy"]
  assert json.loads((workdir / "summary.json").read_text())["rounds"] == 4


def test_resume_equals_uninterrupted(default_run, tmp_path):
  config, full_dir, _ = default_run
  half = load_config("synthetic", "small", rounds=2)
  train_and_evaluate(half, tmp_path, show_progress=False)
  train_and_evaluate(config, tmp_path, resume=True, show_progress=False)
  assert without_wall(read_metrics(tmp_path)) == without_wall(read_metrics(full_dir))
  for key in ("round", "client", "status", "start", "finish"):
    np.testing.assert_array_equal(read_timeline(tmp_path)[key], read_timeline(full_dir)[key])
  from fedjaxscale.training.setup import build

  like = build(config, tmp_path).algorithm.init(jax.tree.map(np.zeros_like, _params_like(config, tmp_path)))
  a, host_a = final_params(tmp_path, like)
  b, host_b = final_params(full_dir, like)
  jax.tree.map(lambda x, y: np.testing.assert_array_equal(np.asarray(x), np.asarray(y)), a, b)
  assert host_a["round"] == host_b["round"] == 4


def block_config(rounds_per_call, rounds=8):
  """synthetic.py:small with fixed local steps (one cohort shape, so blocks of rounds apply),
  evaluated and checkpointed every 4 rounds."""
  return load_config(
    "synthetic",
    "small",
    rounds=rounds,
    eval_every=4,
    checkpoint_every=4,
    **{"local.local_steps": 3, "local.local_epochs": 0.0, "engine.rounds_per_call": rounds_per_call},
  )


def test_blocks_of_rounds_equal_one_round_a_call(tmp_path):
  """engine.rounds_per_call: rounds planned ahead and trained as one program give the records,
  timeline and model of one round a call (to float rounding; here bit for bit), compiling one
  program for the blocks."""
  one = train_and_evaluate(block_config(1), tmp_path / "one", show_progress=False)
  blocks = train_and_evaluate(block_config(6), tmp_path / "blocks", show_progress=False)  # blocks of 4: evals
  a, b = read_metrics(tmp_path / "one"), read_metrics(tmp_path / "blocks")
  assert [r["round"] for r in b] == list(range(1, 9)) and [("eval" in r) for r in b] == [("eval" in r) for r in a]
  for x, y in zip(a, b):
    for key in ("train_loss", "clock_s", "trained", "padding_efficiency"):
      np.testing.assert_allclose(y[key], x[key], rtol=1e-5, err_msg=key)
    if "eval" in x:
      np.testing.assert_allclose(y["eval"]["accuracy"], x["eval"]["accuracy"], rtol=1e-5)
  for key in ("round", "client", "status", "start", "finish"):
    np.testing.assert_array_equal(read_timeline(tmp_path / "blocks")[key], read_timeline(tmp_path / "one")[key])
  assert blocks["engine"]["compiles"] == one["engine"]["compiles"] + 1  # the block program (R = 4)
  assert blocks["clients_trained"] == one["clients_trained"]


def test_blocks_of_rounds_resume_equals_uninterrupted(tmp_path):
  full = train_and_evaluate(block_config(4), tmp_path / "full", show_progress=False)
  train_and_evaluate(block_config(4, rounds=4), tmp_path / "half", show_progress=False)
  resumed = train_and_evaluate(block_config(4), tmp_path / "half", resume=True, show_progress=False)
  assert without_wall(read_metrics(tmp_path / "half")) == without_wall(read_metrics(tmp_path / "full"))
  assert resumed["final_accuracy"] == full["final_accuracy"]
  config = block_config(4)
  from fedjaxscale.training.setup import build

  like = build(config, tmp_path / "like").algorithm.init(
    jax.tree.map(np.zeros_like, _params_like(config, tmp_path / "like"))
  )
  a, _ = final_params(tmp_path / "half", like)
  b, _ = final_params(tmp_path / "full", like)
  jax.tree.map(lambda x, y: np.testing.assert_array_equal(np.asarray(x), np.asarray(y)), a, b)


def _params_like(config, workdir):
  from fedjaxscale.training.setup import build

  parts = build(config, workdir)
  return parts.model.init(jax.random.key(0))


def kill_then_resume(workdir, args, after_rounds=3, timeout=300):
  """Runs ``fedjaxscale.main --workdir=WORKDIR *args`` in a subprocess, ``kill -9``s it once
  ``after_rounds`` rounds are in metrics.jsonl (failing if it finished first), then runs it again
  with ``--resume`` to the end."""
  env = dict(os.environ, JAX_PLATFORMS="cpu", PYTHONUNBUFFERED="1")
  env["XLA_FLAGS"] = "--xla_force_host_platform_device_count=4"
  workdir = pathlib.Path(workdir)
  proc = subprocess.Popen(
    [sys.executable, "-m", "fedjaxscale.main", f"--workdir={workdir}", *args],
    env=env,
    stdout=subprocess.DEVNULL,
    stderr=subprocess.PIPE,
  )
  deadline = time.time() + timeout
  while time.time() < deadline:
    metrics = workdir / "metrics.jsonl"
    if metrics.exists() and len(metrics.read_text().splitlines()) >= after_rounds:
      break
    if proc.poll() is not None:
      pytest.fail(f"the run ended before it could be killed: {proc.stderr.read().decode()[-2000:]}")
    time.sleep(0.05)
  os.kill(proc.pid, signal.SIGKILL)
  proc.wait()
  assert not (workdir / "summary.json").exists(), "killed too late to test anything"
  resumed = subprocess.run(
    [sys.executable, "-m", "fedjaxscale.main", f"--workdir={workdir}", "--resume", *args],
    env=env,
    capture_output=True,
    text=True,
    timeout=timeout,
  )
  assert resumed.returncode == 0, resumed.stderr[-3000:]


def test_killed_run_resumes_to_the_same_result(default_run, tmp_path):
  config, _, _ = default_run
  rounds = 10
  args = [
    "--config",
    f"{CONFIGS / 'synthetic.py'}:small",
    f"--config.rounds={rounds}",
    "--config.checkpoint_every=1",
    "--config.eval_every=0",
    "--noprogress",
  ]
  killed = tmp_path / "killed"
  kill_then_resume(killed, args)
  straight = tmp_path / "straight"
  train_and_evaluate(
    load_config("synthetic", "small", rounds=rounds, checkpoint_every=1, eval_every=0), straight, show_progress=False
  )
  assert without_wall(read_metrics(killed)) == without_wall(read_metrics(straight))
  assert [r["round"] for r in read_metrics(killed)] == list(range(1, rounds + 1))


def test_workdir_with_a_run_needs_resume_or_overwrite(default_run):
  config, workdir, _ = default_run
  with pytest.raises(ConfigError, match="already holds a run"):
    train_and_evaluate(config, workdir, show_progress=False)


def test_overwrite_replaces_the_run(tmp_path):
  config = load_config("synthetic", "small", rounds=1, eval_every=0)
  train_and_evaluate(config, tmp_path, show_progress=False)
  (tmp_path / "metrics.jsonl").write_text('{"round": 99}\n')
  train_and_evaluate(config, tmp_path, overwrite=True, show_progress=False)
  assert [r["round"] for r in read_metrics(tmp_path)] == [1]


@pytest.mark.parametrize(
  "overrides, message",
  [
    ({"clients_per_round": 1000}, "clients_per_round: 1000 is more than the population"),
    ({"local.batch_size": 0}, "local.batch_size: must be >= 1"),
    ({"data.kind": "directory", "data.path": "/nonexistent/dataset"}, "data.path: .*does not exist"),
    ({"system.traces": "/nonexistent/traces.npz"}, "system.traces: .*does not exist"),
    ({"model.num_classes": 5}, "model.num_classes: the model outputs 5 classes but the data has labels up to 9"),
    ({"algorithm.name": "fedsgd"}, "algorithm.name: unknown algorithm"),
    ({"local.local_steps": 3}, "local: set exactly one"),
    ({"engine.rounds_per_call": 0}, "engine.rounds_per_call: must be >= 1"),
  ],
)
def test_bad_config_is_refused_before_anything_is_written(tmp_path, overrides, message):
  workdir = tmp_path / "run"
  with pytest.raises(ConfigError, match=message):
    train_and_evaluate(load_config("synthetic", "small", **overrides), workdir, show_progress=False)
  assert not workdir.exists()


@pytest.mark.parametrize(
  "flag, message",
  [
    ("--config.no_such_field=1", "no_such_field"),
    ("--config.clients_per_round=1000", "more than the population"),
  ],
)
def test_cli_exits_2_with_one_message(tmp_path, flag, message):
  workdir = tmp_path / "run"
  env = dict(os.environ, JAX_PLATFORMS="cpu")
  out = subprocess.run(
    [
      sys.executable,
      "-m",
      "fedjaxscale.main",
      f"--config={CONFIGS / 'synthetic.py'}:small",
      f"--workdir={workdir}",
      flag,
    ],
    env=env,
    capture_output=True,
    text=True,
    timeout=120,
  )
  assert out.returncode == 2, out.stderr[-2000:]
  assert message in out.stderr and "Traceback" not in out.stderr
  assert not workdir.exists()


def test_fedbuff_small(tmp_path):
  summary = train_and_evaluate(load_config("fedbuff", "small"), tmp_path, show_progress=False)
  records = read_metrics(tmp_path)
  assert summary["rounds"] == 4 and len(records) == 4
  assert all(r["aggregated"] == 4 for r in records)
  assert all(np.isfinite(r["train_loss"]) for r in records)
  assert (tmp_path / "summary.json").exists() and not (tmp_path / "plots").exists()  # config.plots = False


@pytest.mark.parametrize("variant", ["fedavg,small", "fedprox,small"])
def test_fedprox_stragglers_small(tmp_path, variant):
  train_and_evaluate(load_config("synthetic_fedprox_stragglers", variant), tmp_path, show_progress=False)
  records = read_metrics(tmp_path)
  assert len(records) == 3 and all(r["stragglers"] > 0 for r in records)
  if variant.startswith("fedprox"):
    assert sum(r["trained"] for r in records) > sum(r["aggregated"] for r in records)  # partial work kept


def test_femnist_fedscale_small_on_fixture_data(tmp_path):
  rng = np.random.default_rng(0)
  root = tmp_path / "femnist"
  for split, n_clients in (("train", 12), ("test", 12)):
    sizes = rng.integers(3, 12, n_clients)
    write_dataset(
      root / split,
      [f"writer_{i}" for i in range(n_clients)],
      {
        "x": rng.integers(0, 256, (sizes.sum(), 28, 28), dtype=np.uint8),
        "y": rng.integers(0, 62, sizes.sum()).astype(np.int32),
      },
      sizes,
    )
  for variant in ("small", "yogi,small"):
    workdir = tmp_path / variant.replace(",", "_")
    train_and_evaluate(
      load_config("femnist_fedscale", variant, **{"data.path": str(root)}), workdir, show_progress=False
    )
    records = read_metrics(workdir)
    assert len(records) == 2 and np.isfinite(records[-1]["eval"]["accuracy"])


def _write_splits(root, make, n_clients=12, seed=0):
  """Train and test splits of ``n_clients`` clients whose features ``make(rng, n)`` returns."""
  rng = np.random.default_rng(seed)
  for split in ("train", "test"):
    sizes = rng.integers(3, 9, n_clients)
    write_dataset(root / split, [f"c{i}" for i in range(n_clients)], make(rng, int(sizes.sum())), sizes)
  return root


def _tokens(vocab, length, scalar_label=False):
  def make(rng, n):
    x = rng.integers(3, vocab, (n, length)).astype(np.int32)
    x[:, length - 3 :] = 0  # right padding
    y = rng.integers(0, vocab, n).astype(np.int32) if scalar_label else np.roll(x, -1, axis=1)
    return {"x": x, "y": y}

  return make


def _images(shape, classes):
  def make(rng, n):
    return {"x": rng.integers(0, 256, (n, *shape), dtype=np.uint8), "y": rng.integers(0, classes, n).astype(np.int32)}

  return make


@pytest.mark.parametrize(
  "config, variant, make",
  [
    ("emnist_fedyogi", "small", _images((28, 28), 62)),
    ("shakespeare_fedavg", "small", _tokens(90, 16)),
    ("shakespeare_fedavg", "leaf,small", _tokens(80, 80, scalar_label=True)),
    ("stackoverflow_nwp", "small", _tokens(54, 20)),
    ("femnist_fedscale", "resnet18,small", _images((28, 28), 62)),
  ],
)
def test_real_data_configs_run_on_fixture_data(tmp_path, config, variant, make):
  root = _write_splits(tmp_path / "data", make)
  workdir = tmp_path / "run"
  overrides = {"data.path": str(root)}
  if "resnet18" in variant:  # autotune would compile every candidate of the deepest model (its own tests cover it)
    overrides["engine.strategy"] = "vmap+patches"
  train_and_evaluate(load_config(config, variant, **overrides), workdir, show_progress=False)
  records = read_metrics(workdir)
  assert len(records) == 2 and all(r["aggregated"] >= 1 for r in records)
  assert np.isfinite(records[-1]["train_loss"]) and 0 <= records[-1]["eval"]["accuracy"] <= 1
