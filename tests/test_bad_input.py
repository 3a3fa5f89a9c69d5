"""Bad input is refused before anything is written (exit 2, one message naming the field or file).

Each test names the item of issue 10 it guards. Runs are tiny (a 60-client Synthetic population,
a few rounds); most checks call the validation in-process, a few go through the CLI.
"""

import importlib.util
import json
import os
import pathlib
import re
import shutil
import subprocess
import sys

import numpy as np
import pytest

from fedjaxscale.data import write_dataset
from fedjaxscale.systems import SystemTraces, TraceError, generate_traces, save_traces
from fedjaxscale.training import ConfigError, train_and_evaluate
from fedjaxscale.training.setup import check_config

ROOT = pathlib.Path(__file__).resolve().parents[1]
CONFIGS = ROOT / "experiments" / "configs"


def load_config(name="synthetic", variant="small", **overrides):
  spec = importlib.util.spec_from_file_location(name, CONFIGS / f"{name}.py")
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  config = module.get_config(variant)
  set_fields(config, overrides)
  return config


def set_fields(config, overrides, *, ignore_type=False):
  for key, value in overrides.items():
    node = config
    *path, last = key.split(".")
    for part in path:
      node = node[part]
    if ignore_type:
      with node.ignore_type():
        node[last] = value
    else:
      node[last] = value


def tiny(**overrides):
  """Seconds to run: 60 clients of 50 to 60 examples, K = 3, every client always online."""
  base = {
    "rounds": 2,
    "clients_per_round": 3,
    "data.num_clients": 60,
    "data.max_size": 60,
    "eval_every": 1,
    "checkpoint_every": 1,
    "system.always_online": True,
    "data.iid": False,  # Synthetic(1, 1), whose divergence and provenance these tests were written for
  }
  return load_config(**{**base, **overrides})


def snapshot(directory: pathlib.Path) -> dict:
  """Every path under ``directory`` with its bytes (None for directories)."""
  return {
    str(p.relative_to(directory)): (p.read_bytes() if p.is_file() else None) for p in sorted(directory.rglob("*"))
  }


def strict_load(path: pathlib.Path):
  def refuse(name):
    raise AssertionError(f"{path} holds a bare {name}")

  return json.loads(path.read_text(), parse_constant=refuse)


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory):
  """A finished 3-round run with checkpoints after rounds 2 and 3 (copy it before changing it)."""
  workdir = tmp_path_factory.mktemp("finished") / "run"
  train_and_evaluate(tiny(rounds=3), workdir, show_progress=False)
  return workdir


def finished_config():
  return tiny(rounds=3)


@pytest.fixture
def run_copy(finished_run, tmp_path):
  copy = tmp_path / "run"
  shutil.copytree(finished_run, copy, symlinks=True)
  return finished_config(), copy


def directory_dataset(
  root, *, y_train=None, y_test=None, x_test_dim=None, test_y=True, y_dtype=np.int64, sizes=None, x=None, x_test=None
):
  """10 clients x 5 examples of 4 float features (or ``x``), labels ``y_train`` / ``y_test``."""
  sizes = np.full(10, 5) if sizes is None else np.asarray(sizes)
  n = int(sizes.sum())
  ids = [f"c{i}" for i in range(len(sizes))]
  rng = np.random.default_rng(0)
  x = rng.standard_normal((n, 4)).astype(np.float32) if x is None else x
  y_train = rng.integers(0, 10, n) if y_train is None else np.asarray(y_train)
  write_dataset(root / "train", ids, {"x": x, "y": y_train.astype(y_dtype)}, sizes)
  x_test = rng.standard_normal((n, x_test_dim or x.shape[1])).astype(np.float32) if x_test is None else x_test
  y_test = rng.integers(0, 10, n) if y_test is None else np.asarray(y_test)
  features = {"x": x_test, "y": y_test.astype(y_dtype)} if test_y else {"x": x_test}
  write_dataset(root / "test", ids, features, sizes)
  return root


def directory_config(root, **overrides):
  return tiny(**{"data.kind": "directory", "data.path": str(root), "clients_per_round": 2, **overrides})


def refused(config, workdir, match, **kwargs):
  with pytest.raises(ConfigError, match=match) as info:
    train_and_evaluate(config, workdir, show_progress=False, **kwargs)
  assert "\n" not in str(info.value)
  return str(info.value)


# -- 1. labels outside the model's classes, token ids outside the vocabulary ----------------------


@pytest.mark.parametrize(
  "kind, bad",
  [("train", -1), ("train", 10), ("test", -3), ("test", 12)],
)
def test_labels_outside_the_classes_are_refused(tmp_path, kind, bad):
  n = 50
  y = np.random.default_rng(1).integers(0, 10, n)
  y[7] = bad
  root = directory_dataset(tmp_path / "data", **{f"y_{kind}": y})
  workdir = tmp_path / "run"
  message = refused(directory_config(root), workdir, r"^config\.model\.num_classes: .*y\.npy: labels span")
  assert f"{kind}/y.npy" in message and str(bad) in message
  assert not workdir.exists()


def test_token_ids_outside_the_vocabulary_are_refused(tmp_path):
  # A Sent140-like dataset (ids up to 300) run through the 80-symbol Shakespeare model.
  rng = np.random.default_rng(0)
  x = rng.integers(0, 300, (50, 12)).astype(np.int32)
  y = rng.integers(0, 80, 50)
  root = directory_dataset(tmp_path / "data", x=x, x_test=x.copy(), y_train=y, y_test=y)
  config = directory_config(root, **{"model.name": "shakespeare_lstm"})
  message = refused(config, tmp_path / "run", r"^config\.model\.vocab_size: .*x\.npy: token ids span \[\d+, 29\d\]")
  assert "[0, 80)" in message


# -- 2. --overwrite validates before it deletes ----------------------------------------------------


def bad_trace_file(path, **changes):
  traces = generate_traces(60, seed=0)
  save_traces(path, traces)
  with np.load(path) as f:
    arrays = dict(f)
  for key, (index, value) in changes.items():
    arrays[key] = arrays[key].astype(np.float64)
    arrays[key][index] = value
  np.savez(path, **arrays)
  return path


def test_overwrite_with_a_corrupt_trace_keeps_the_old_run(run_copy, tmp_path):
  _, workdir = run_copy
  before = snapshot(workdir)
  traces = bad_trace_file(tmp_path / "bad.npz", compute_ms_per_sample=(3, -5.0))
  config = tiny(**{"system.traces": str(traces), "system.always_online": False})
  refused(config, workdir, r"^config\.system\.traces: .*compute_ms_per_sample", overwrite=True)
  assert snapshot(workdir) == before


def test_overwrite_with_other_data_replaces_the_data_only_after_the_checks(run_copy):
  config, workdir = run_copy
  # A config that is refused only once its data is generated (K above the population is caught
  # earlier, so use a model that cannot read the data): the old data and run stay.
  before = snapshot(workdir)
  refused(tiny(**{"data.num_clients": 70, "model.name": "femnist_cnn"}), workdir, r"^config\.model", overwrite=True)
  assert snapshot(workdir) == before


# -- 3. Oort with non-finite clients ---------------------------------------------------------------


def test_oort_survives_non_finite_clients_and_resumes(tmp_path):
  config = tiny(**{"system.selection": "oort", "algorithm.client_lr": 1e38, "rounds": 2})
  with pytest.warns(RuntimeWarning, match="non-finite"):
    summary = train_and_evaluate(config, tmp_path, show_progress=False)
  records = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
  assert all(r["nonfinite"] == r["trained"] > 0 for r in records)
  assert summary["nonfinite_clients"] == sum(r["trained"] for r in records)
  config.rounds = 3
  with pytest.warns(RuntimeWarning, match="non-finite"):
    assert train_and_evaluate(config, tmp_path, resume=True, show_progress=False)["rounds"] == 3


# -- 4. one run per workdir ------------------------------------------------------------------------


def hold_lock(workdir):
  code = (
    "import sys, time\n"
    "from fedjaxscale.training.workdir import WorkdirLock\n"
    "WorkdirLock(sys.argv[1]).acquire()\n"
    "print('locked', flush=True)\n"
    "time.sleep(120)\n"
  )
  env = dict(os.environ, PYTHONPATH=str(ROOT))
  holder = subprocess.Popen([sys.executable, "-c", code, str(workdir)], stdout=subprocess.PIPE, text=True, env=env)
  assert holder.stdout.readline().strip() == "locked"
  return holder


def test_a_second_process_in_a_live_workdir_is_refused(run_copy):
  config, workdir = run_copy
  holder = hold_lock(workdir)
  try:
    before = snapshot(workdir)
    for kwargs in ({}, {"resume": True}, {"overwrite": True}):
      message = refused(config, workdir, "is in use by process", **kwargs)
      assert f"process {holder.pid}" in message
    assert snapshot(workdir) == before
  finally:
    holder.kill()
    holder.wait()
  # Once the holder is gone, the lock is free again (a killed holder's flock dies with it).
  config.rounds = 4
  assert train_and_evaluate(config, workdir, resume=True, show_progress=False)["rounds"] == 4
  assert not (workdir / ".fedjaxscale.lock").exists()


def test_cli_refuses_a_live_workdir_with_exit_2(run_copy):
  _, workdir = run_copy
  holder = hold_lock(workdir)
  try:
    out = run_cli(workdir, "--resume")
  finally:
    holder.kill()
    holder.wait()
  assert out.returncode == 2 and f"process {holder.pid}" in out.stderr, out.stderr[-2000:]
  assert "Traceback" not in out.stderr


def run_cli(workdir, *flags, config="synthetic.py:small"):
  env = dict(os.environ, JAX_PLATFORMS="cpu", PYTHONPATH=str(ROOT))
  args = [sys.executable, "-m", "fedjaxscale.main", f"--config={CONFIGS / config}", f"--workdir={workdir}", *flags]
  return subprocess.run(args, env=env, capture_output=True, text=True, timeout=300)


# -- 5. rounds where every client is non-finite; strict JSON --------------------------------------


def test_all_non_finite_rounds_report_no_loss_and_strict_json(tmp_path):
  config = tiny(**{"algorithm.client_lr": 1e38})
  with pytest.warns(RuntimeWarning, match="non-finite") as caught:
    summary = train_and_evaluate(config, tmp_path, show_progress=False)
  assert sum("non-finite" in str(w.message) for w in caught) == 1  # warned once
  for line in (tmp_path / "metrics.jsonl").read_text().splitlines():
    record = json.loads(line, parse_constant=lambda c: pytest.fail(f"bare {c} in metrics.jsonl"))
    assert record["train_loss"] is None and record["nonfinite"] == record["trained"]
  stored = strict_load(tmp_path / "summary.json")
  assert stored["final_train_loss"] is None and summary["final_train_loss"] is None
  assert stored["nonfinite_rounds"] == 2 and stored["nonfinite_clients"] > 0


def test_a_diverged_model_is_not_evaluated_into_best_accuracy(tmp_path):
  # Finite client updates, a server step that overflows float32: the model becomes non-finite.
  config = tiny(**{"algorithm.server_lr": 1e38, "algorithm.client_lr": 1.0})
  with pytest.warns(RuntimeWarning, match="diverged"):
    summary = train_and_evaluate(config, tmp_path, show_progress=False)
  records = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
  diverged = [r for r in records if r["eval"].get("diverged")]
  assert diverged and all(r["eval"]["accuracy"] is None for r in diverged)
  assert summary["diverged_round"] == diverged[0]["round"]
  assert summary["best_accuracy_round"] is None or summary["best_accuracy_round"] < diverged[0]["round"]
  strict_load(tmp_path / "summary.json")


# -- 6. --resume into the same run only ------------------------------------------------------------


@pytest.mark.parametrize(
  "change, field",
  [
    ({"clients_per_round": 4}, "config.clients_per_round"),
    ({"data.num_clients": 80}, "config.data.num_clients"),
    ({"model.name": "mlp"}, "config.model.name"),
  ],
)
def test_resume_refuses_a_changed_config(run_copy, change, field):
  _, workdir = run_copy
  before = snapshot(workdir)
  message = refused(tiny(rounds=4, **change), workdir, r"^--resume: the config differs", resume=True)
  assert field in message and "config.rounds" in message  # names the field, and what may change
  assert snapshot(workdir) == before


def test_resume_may_change_rounds_and_frequencies(run_copy):
  _, workdir = run_copy
  summary = train_and_evaluate(tiny(rounds=4, eval_every=2), workdir, resume=True, show_progress=False)
  assert summary["rounds"] == 4


# -- 7. interrupted or foreign Synthetic data -------------------------------------------------------


def test_half_written_data_does_not_brick_the_workdir(finished_run, tmp_path):
  config, done = finished_config(), finished_run
  workdir = tmp_path / "run"
  (workdir / "data").mkdir(parents=True)
  shutil.copytree(done / "data" / "train", workdir / "data" / "train")  # killed before data/test
  summary = train_and_evaluate(config, workdir, show_progress=False)
  assert summary["rounds"] == 3
  assert sorted(p.name for p in (workdir / "data").iterdir()) == ["test", "train"]
  assert not any(p.name.startswith(".data") for p in workdir.iterdir())


def test_data_from_another_config_is_not_reused(finished_run, tmp_path):
  done = finished_run
  workdir = tmp_path / "run"
  shutil.copytree(done / "data", workdir / "data")  # 60 clients, alpha 1
  config = tiny(**{"data.num_clients": 70, "data.alpha": 0.5, "rounds": 1})
  train_and_evaluate(config, workdir, show_progress=False)
  meta = json.loads((workdir / "data" / "train" / "meta.json").read_text())
  assert meta["num_clients"] == 70 and meta["provenance"]["parameters"]["alpha"] == 0.5


def test_a_kill_while_generating_leaves_no_data(tmp_path, monkeypatch):
  from fedjaxscale.training import setup

  real = setup.write_synthetic

  def killed(root, *args, **kwargs):
    real(root, *args, **kwargs)
    raise KeyboardInterrupt  # as if killed after both splits were written, before the rename

  monkeypatch.setattr(setup, "write_synthetic", killed)
  workdir = tmp_path / "run"
  workdir.mkdir()
  with pytest.raises(KeyboardInterrupt):
    train_and_evaluate(tiny(), workdir, show_progress=False)
  assert list(workdir.iterdir()) == []


# -- 8. a failed --resume changes nothing -----------------------------------------------------------


def test_failed_resume_keeps_the_summary(run_copy):
  config, workdir = run_copy
  metrics = workdir / "metrics.jsonl"
  metrics.write_text(metrics.read_text().splitlines(keepends=True)[0])  # outputs behind the checkpoint
  before = snapshot(workdir)
  refused(config, workdir, r"^--resume: .*metrics\.jsonl ends at round 1", resume=True)
  assert snapshot(workdir) == before and (workdir / "summary.json").exists()


def test_resume_before_the_first_checkpoint_points_to_overwrite(tmp_path):
  config = tiny(checkpoint_every=0, rounds=1)
  train_and_evaluate(config, tmp_path, show_progress=False)
  refused(config, tmp_path, r"^--resume: .*first checkpoint.*--overwrite", resume=True)


# -- 9. a damaged newest checkpoint -------------------------------------------------------------


def _truncate_largest_file(directory: pathlib.Path):
  files = sorted((p for p in directory.rglob("*") if p.is_file()), key=lambda p: p.stat().st_size)
  biggest = files[-1]
  biggest.write_bytes(biggest.read_bytes()[: biggest.stat().st_size // 2])


def _final_state(config, workdir, round_):
  import jax

  from fedjaxscale.training.checkpoint import Checkpointer
  from fedjaxscale.training.setup import build

  parts = build(config, workdir)
  like = parts.algorithm.init(parts.model.init(jax.random.key(0)))
  ckpt = Checkpointer(workdir / "checkpoints")
  try:
    state, _ = ckpt.restore(round_, like)
  finally:
    ckpt.close()
  return jax.tree.map(np.asarray, state)


def test_a_truncated_newest_checkpoint_falls_back_and_resumes_bit_identically(finished_run, run_copy):
  done = finished_run
  config, workdir = run_copy
  _truncate_largest_file(workdir / "checkpoints" / "3")
  with pytest.warns(RuntimeWarning, match=r"round\(s\) \[3\] do not restore.*resuming from round 2"):
    train_and_evaluate(config, workdir, resume=True, show_progress=False)

  def rounds(d):
    lines = (d / "metrics.jsonl").read_text().splitlines()
    return [{k: v for k, v in json.loads(line).items() if k not in ("wall_s", "timing")} for line in lines]

  assert rounds(workdir) == rounds(done)
  assert (workdir / "timeline.csv").read_text() == (done / "timeline.csv").read_text()
  a, b = _final_state(config, workdir, 3), _final_state(config, done, 3)
  import jax

  jax.tree.map(np.testing.assert_array_equal, a, b)


def test_no_checkpoint_restores_names_the_directory(run_copy):
  config, workdir = run_copy
  for step in ("2", "3"):
    _truncate_largest_file(workdir / "checkpoints" / step)
  before = snapshot(workdir)
  message = refused(config, workdir, r"^--resume: .*checkpoints: no checkpoint restores", resume=True)
  assert "--overwrite" in message
  assert snapshot(workdir) == before


# -- 10, 11. every field checked up front, one message naming it ----------------------------------


BAD_FIELDS = [
  ("algorithm.weighting", "by_size"),
  ("system.mapping", "random"),
  ("system.compression", 0.0),
  ("algorithm.mu", -0.1),
  ("engine.max_clients_per_chunk", -1),
  ("system.backward_factor", -1.0),
  ("algorithm.server_lr", float("nan")),
  ("algorithm.client_lr", float("inf")),
  ("system.deadline_s", float("inf")),
  ("algorithm.beta1", 1.5),
  ("algorithm.tau", -1.0),
  ("eval_batch_size", 0),
  ("algorithm.client_lr_decay_every", 0),
  ("seed", -1),
  ("model.num_classes", 0),
  ("data.max_size", 30),
]


@pytest.mark.parametrize("field, value", BAD_FIELDS)
def test_bad_field_is_refused_up_front(tmp_path, field, value):
  config = tiny()
  set_fields(config, {field: value})
  workdir = tmp_path / "run"
  refused(config, workdir, "^" + re.escape(f"config.{field}: "))
  assert not workdir.exists()


def test_async_setting_errors_name_the_field_once(tmp_path):
  config = load_config("fedbuff", "small")
  config.system.max_concurrency = 1
  message = refused(config, tmp_path / "run", r"^config\.system\.max_concurrency: ")
  assert message.count("config.") == 1


def test_unknown_and_missing_fields_are_named(tmp_path):
  config = tiny()
  with config.unlocked():
    config.algorithm.no_such = 1
  refused(config, tmp_path / "a", r"^config\.algorithm\.no_such: is not a known field")
  config = tiny()
  with config.unlocked():
    del config.system["mode"]
  refused(config, tmp_path / "b", r"^config\.system\.mode: is missing")


def test_a_trace_where_nobody_is_ever_online_is_refused(tmp_path):
  path = tmp_path / "never.npz"
  save_traces(path, generate_traces(60, seed=0))
  with np.load(path) as f:
    arrays = dict(f)
  arrays["offsets"] = np.zeros_like(arrays["offsets"])
  arrays["on_start_s"] = arrays["on_start_s"][:0]
  arrays["on_duration_s"] = arrays["on_duration_s"][:0]
  np.savez(path, **arrays)
  config = tiny(**{"system.traces": str(path), "system.always_online": False})
  refused(config, tmp_path / "run", r"^config\.system\.traces: no client of the population is ever online")


@pytest.mark.parametrize(
  "case, match",
  [
    ("empty_client", r"^config\.data: .*1 client\(s\) hold no examples"),
    ("float_labels", r"^config\.data: .*train/y\.npy: labels must be integers"),
    ("test_shape", r"^config\.data: .*feature 'x' has per-example shape \(3,\) in the test split but \(4,\)"),
    ("test_without_y", r"^config\.data: .*the test split has no 'y' feature"),
  ],
)
def test_bad_datasets_are_refused_up_front(tmp_path, case, match):
  kwargs = {
    "empty_client": dict(sizes=[5] * 9 + [0]),
    "float_labels": dict(y_dtype=np.float32, y_train=np.full(50, 2.5)),
    "test_shape": dict(x_test_dim=3),
    "test_without_y": dict(test_y=False),
  }[case]
  root = directory_dataset(tmp_path / "data", **kwargs)
  workdir = tmp_path / "run"
  refused(directory_config(root), workdir, match)
  assert not workdir.exists()


# -- 12. traces checked as stored; small populations warned -----------------------------------------


@pytest.mark.parametrize("field, value", [("compute_ms", 1e300), ("down_kbps", 1e-50)])
def test_trace_values_are_checked_as_float32(field, value):
  base = generate_traces(4, seed=0)
  arrays = {"compute_ms": base.compute_ms, "down_kbps": base.down_kbps, "up_kbps": base.up_kbps}
  arrays[field] = arrays[field].astype(np.float64)
  arrays[field][1] = value
  with pytest.raises(TraceError, match="as float32"):
    SystemTraces.create(arrays["compute_ms"], arrays["down_kbps"], arrays["up_kbps"], base.availability)


def test_a_population_too_small_to_fill_rounds_is_warned_and_notes_count_from_one(tmp_path):
  config = tiny(**{"data.num_clients": 105, "clients_per_round": 20, "system.always_online": False, "rounds": 1})
  with pytest.warns(RuntimeWarning, match=r"only about \d+\.\d of the 105 clients are online .* the 26 a round"):
    train_and_evaluate(config, tmp_path, show_progress=False)
  record = json.loads((tmp_path / "metrics.jsonl").read_text().splitlines()[0])
  assert record["round"] == 1 and record["note"].startswith("round 1:")


# -- property: random bad values, in-process and through the CLI --------------------------------------

hypothesis = pytest.importorskip("hypothesis")
st = hypothesis.strategies

INT_FIELDS = {
  "seed": 0,
  "rounds": 1,
  "clients_per_round": 1,
  "local.batch_size": 1,
  "eval_every": 0,
  "eval_batch_size": 1,
  "checkpoint_every": 0,
  "algorithm.client_lr_decay_every": 1,
  "system.max_concurrency": 1,
  "system.max_staleness": 0,
  "engine.max_clients_per_chunk": 0,
  "data.num_clients": 1,
  "model.num_classes": 1,
}
# field -> (low, high, low_open, high_open)
REAL_FIELDS = {
  "algorithm.client_lr": (0.0, None, True, False),
  "algorithm.server_lr": (0.0, None, True, False),
  "algorithm.tau": (0.0, None, True, False),
  "algorithm.mu": (0.0, None, False, False),
  "algorithm.beta1": (0.0, 1.0, False, True),
  "algorithm.beta2": (0.0, 1.0, False, True),
  "algorithm.client_momentum": (0.0, 1.0, False, True),
  "system.deadline_s": (0.0, None, False, False),
  "system.backward_factor": (0.0, None, True, False),
  "system.compression": (0.0, 1.0, True, False),
  "system.overcommit": (1.0, None, False, False),
  "target_accuracy": (0.0, 1.0, False, False),
  "data.alpha": (0.0, None, False, False),
}
CHOICE_FIELDS = {
  "algorithm.name": ("fedavg", "fedprox", "fedyogi", "fedadam", "fedadagrad"),
  "algorithm.weighting": ("num_examples", "uniform"),
  "model.name": ("logistic_regression", "mlp", "femnist_cnn", "resnet18_gn", "speech_cnn", "shakespeare_lstm"),
  "system.mode": ("sync", "async"),
  "system.selection": ("random", "oort"),
  "system.mapping": ("modulo", "fedscale", "identity"),
  "system.stragglers": ("drop", "partial"),
  "system.availability_mode": ("window", "endpoints"),
  "engine.backend": ("vmap", "loop", "debug"),
}
ILL_TYPED = st.one_of(st.text(max_size=5), st.none(), st.lists(st.integers(), max_size=2), st.booleans())


def _bad_real(field):
  low, high, low_open, high_open = REAL_FIELDS[field]
  below = st.floats(max_value=low, allow_nan=False, allow_infinity=False)
  below = below.filter(lambda v: v <= low if low_open else v < low)
  options = [below, st.sampled_from([float("nan"), float("inf"), float("-inf")]), st.text(max_size=3)]
  if high is not None:
    above = st.floats(min_value=high, allow_nan=False, allow_infinity=False)
    options.append(above.filter(lambda v: v >= high if high_open else v > high))
  return st.one_of(*options)


BAD_VALUES = st.one_of(
  st.sampled_from(sorted(INT_FIELDS)).flatmap(
    lambda f: st.tuples(
      st.just(f),
      st.one_of(st.integers(max_value=INT_FIELDS[f] - 1, min_value=-(2**40)), st.floats(0.5, 3.5), ILL_TYPED),
    )
  ),
  st.sampled_from(sorted(REAL_FIELDS)).flatmap(lambda f: st.tuples(st.just(f), _bad_real(f))),
  st.sampled_from(sorted(CHOICE_FIELDS)).flatmap(
    lambda f: st.tuples(
      st.just(f),
      st.one_of(st.text(max_size=8), st.sampled_from(["stackoverflow_lstm", "FedAvg", "sync ", ""]), ILL_TYPED).filter(
        lambda v: (
          v not in CHOICE_FIELDS[f] and not (f == "model.name" and v in ("shakespeare_seq_lstm", "stackoverflow_lstm"))
        )
      ),
    )
  ),
)


@hypothesis.settings(
  max_examples=40, deadline=None, suppress_health_check=[hypothesis.HealthCheck.function_scoped_fixture]
)
@hypothesis.given(bad=BAD_VALUES, fresh=st.booleans())
def test_property_bad_values_are_refused_and_the_workdir_is_unchanged(run_copy, tmp_path, bad, fresh):
  field, value = bad
  _, workdir = run_copy
  config = tiny()
  set_fields(config, {field: value}, ignore_type=True)
  target = tmp_path / "fresh" if fresh else workdir
  before = None if fresh else snapshot(workdir)
  with pytest.raises(ConfigError) as info:
    train_and_evaluate(config, target, overwrite=not fresh, show_progress=False)
  message = str(info.value)
  assert message.startswith(f"config.{field}: ") and "\n" not in message, message
  if fresh:
    assert not target.exists()
  else:
    assert snapshot(workdir) == before
  with pytest.raises(ConfigError, match="^" + re.escape(f"config.{field}: ")):
    check_config(config)


@pytest.mark.parametrize(
  "flag, field",
  [
    ("--config.algorithm.server_lr=nan", "config.algorithm.server_lr"),
    ("--config.seed=-1", "config.seed"),
    ("--config.system.compression=0", "config.system.compression"),
  ],
)
def test_cli_bad_values_exit_2_and_leave_the_run(run_copy, flag, field):
  _, workdir = run_copy
  before = snapshot(workdir)
  out = run_cli(workdir, "--overwrite", flag)
  assert out.returncode == 2, out.stderr[-2000:]
  errors = [line for line in out.stderr.splitlines() if line.startswith("fedjaxscale: error:")]
  assert len(errors) == 1 and field + ":" in errors[0] and "Traceback" not in out.stderr
  assert snapshot(workdir) == before
