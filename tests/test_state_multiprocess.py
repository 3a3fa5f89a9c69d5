"""SCAFFOLD with a memory-mapped client-state store: 2 processes x 2 CPU devices equal 1 process x 4."""

import subprocess
import sys

from tests.test_multiprocess import ROOT, assert_same_run, env, free_port

CONFIG = f"{ROOT / 'experiments' / 'configs' / 'scaffold.py'}:scaffold,small"
ARGS = ["--noprogress", "--config.state.backing=memmap", "--config.eval_every=0"]


def command(workdir, *args):
  return [sys.executable, "-m", "fedjaxscale.main", f"--config={CONFIG}", f"--workdir={workdir}", *ARGS, *args]


def test_two_processes_equal_one_process_with_client_states(tmp_path):
  single = tmp_path / "single"
  out = subprocess.run(command(single), env=env(4), capture_output=True, text=True, timeout=600)
  assert out.returncode == 0, out.stderr[-3000:]
  port = free_port()
  pair = tmp_path / "pair"
  procs = [
    subprocess.Popen(
      command(pair, f"--coordinator_address=localhost:{port}", "--num_processes=2", f"--process_id={i}"),
      env=env(2),
      stdout=subprocess.PIPE,
      stderr=subprocess.PIPE,
      text=True,
    )
    for i in range(2)
  ]
  outs = [p.communicate(timeout=600) for p in procs]
  for p, (_, err) in zip(procs, outs):
    assert p.returncode == 0, err[-3000:]
  assert_same_run(pair, single)
  assert list((pair / "client_states" / "live").glob("live-*.bin"))
