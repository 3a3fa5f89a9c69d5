"""Real multi-process runs on localhost: 2 processes x 2 CPU devices (gloo collectives) against
1 process x 4 devices, resume after a checkpoint, and a peer that dies."""

import json
import os
import pathlib
import signal
import socket
import subprocess
import sys
import time

import numpy as np
import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]
CONFIG = f"{ROOT / 'experiments' / 'configs' / 'synthetic.py'}:small"


def free_port() -> int:
  with socket.socket() as s:
    s.bind(("localhost", 0))
    return s.getsockname()[1]


def env(devices: int) -> dict:
  e = dict(os.environ, JAX_PLATFORMS="cpu", PYTHONUNBUFFERED="1")
  e["XLA_FLAGS"] = f"--xla_force_host_platform_device_count={devices}"
  return e


def command(workdir, *args):
  return [
    sys.executable,
    "-m",
    "fedjaxscale.main",
    f"--config={CONFIG}",
    f"--workdir={workdir}",
    "--noprogress",
    "--json",
    *args,
  ]


def run_single(workdir, *args):
  out = subprocess.run(command(workdir, *args), env=env(4), capture_output=True, text=True, timeout=600)
  assert out.returncode == 0, out.stderr[-3000:]


def launch_pair(workdir, *args, heartbeat=20):
  port = free_port()
  return [
    subprocess.Popen(
      command(
        workdir,
        f"--coordinator_address=localhost:{port}",
        "--num_processes=2",
        f"--process_id={i}",
        f"--heartbeat_timeout_s={heartbeat}",
        *args,
      ),
      env=env(2),
      stdout=subprocess.PIPE,
      stderr=subprocess.PIPE,
      text=True,
    )
    for i in range(2)
  ]


def run_pair(workdir, *args):
  procs = launch_pair(workdir, *args)
  outs = [p.communicate(timeout=600) for p in procs]
  for p, (_, err) in zip(procs, outs):
    assert p.returncode == 0, err[-3000:]
  return outs


def metrics(workdir):
  return [json.loads(line) for line in (pathlib.Path(workdir) / "metrics.jsonl").read_text().splitlines()]


def comparable(records):
  return [{k: v for k, v in r.items() if k not in ("wall_s", "timing")} for r in records]


def final_state(workdir):
  """The newest checkpoint's server state, read back onto one device (any saving topology)."""
  import jax
  import orbax.checkpoint as ocp

  directory = pathlib.Path(workdir) / "checkpoints"
  step = max(int(p.name) for p in directory.iterdir() if p.name.isdigit())
  one_device = jax.sharding.SingleDeviceSharding(jax.devices()[0])
  checkpointer = ocp.StandardCheckpointer()
  tree = checkpointer.metadata(directory / str(step) / "server").item_metadata.tree
  target = jax.tree.map(lambda m: jax.ShapeDtypeStruct(m.shape, m.dtype, sharding=one_device), tree)
  return checkpointer.restore(directory / str(step) / "server", target)


@pytest.fixture(scope="module")
def single(tmp_path_factory):
  workdir = tmp_path_factory.mktemp("single")
  run_single(workdir)
  return workdir


def assert_same_run(a, b):
  ra, rb = comparable(metrics(a)), comparable(metrics(b))
  assert [r["round"] for r in ra] == [r["round"] for r in rb]
  for x, y in zip(ra, rb):
    assert x["clock_s"] == y["clock_s"] and x["aggregated"] == y["aggregated"]
    np.testing.assert_allclose(x["train_loss"], y["train_loss"], rtol=1e-5)
  import jax

  jax.tree.map(
    lambda u, v: np.testing.assert_allclose(np.asarray(u), np.asarray(v), rtol=1e-5, atol=1e-6),
    final_state(a),
    final_state(b),
  )


def test_two_processes_equal_one_process_of_four_devices(single, tmp_path):
  outs = run_pair(tmp_path)
  assert_same_run(tmp_path, single)
  assert '"rounds": 4' in outs[0][0] and '"rounds"' not in outs[1][0]  # only process 0 reports


def test_two_process_resume_equals_uninterrupted(single, tmp_path):
  run_pair(tmp_path, "--config.rounds=2")
  run_pair(tmp_path, "--resume")
  assert_same_run(tmp_path, single)


def test_a_dead_peer_fails_the_run_in_bounded_time(tmp_path):
  procs = launch_pair(
    tmp_path, "--config.rounds=100000", "--config.checkpoint_every=0", "--config.eval_every=0", heartbeat=5
  )
  metrics_file = tmp_path / "metrics.jsonl"
  deadline = time.time() + 300
  while time.time() < deadline and not (metrics_file.exists() and metrics_file.read_text().count("\n") >= 2):
    assert all(p.poll() is None for p in procs), procs[0].stderr.read()[-3000:]
    time.sleep(0.1)
  os.kill(procs[1].pid, signal.SIGKILL)
  start = time.time()
  try:
    _, err = procs[0].communicate(timeout=120)
  except subprocess.TimeoutExpired:
    procs[0].kill()
    pytest.fail("process 0 kept waiting for its dead peer")
  assert procs[0].returncode != 0
  assert time.time() - start < 120
  assert any(word in err.lower() for word in ("peer", "heartbeat", "task", "connection", "gloo")), err[-3000:]
