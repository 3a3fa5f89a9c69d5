"""SCAFFOLD with a memory-mapped client-state store: 2 processes x 2 CPU devices equal 1 process x 4,
metrics, server state and every client's stored state alike."""

import json
import pathlib
import subprocess
import sys

import numpy as np

from tests.test_multiprocess import ROOT, assert_same_run, env, free_port

CONFIG = f"{ROOT / 'experiments' / 'configs' / 'scaffold.py'}:scaffold,small"
ARGS = ["--noprogress", "--config.state.backing=memmap", "--config.eval_every=0"]


def command(workdir, *args):
  return [sys.executable, "-m", "fedjaxscale.main", f"--config={CONFIG}", f"--workdir={workdir}", *ARGS, *args]


def stored_states(workdir) -> dict[int, np.ndarray]:
  """Every stored client's state (population index -> its row's values), read from the live store
  with the row index of the run's last checkpoint (taken after the last round)."""
  import orbax.checkpoint as ocp

  directory = pathlib.Path(workdir) / "checkpoints"
  step = directory / str(max(int(p.name) for p in directory.iterdir() if p.name.isdigit()))
  meta = json.loads((step / "host_json" / "metadata").read_text())["client_states"]
  row_of = np.asarray(ocp.StandardCheckpointer().restore(step / "host_arrays")["client_states"]["row_of"])
  layout = json.loads(meta["fingerprint"])
  assert {leaf[3] for leaf in layout["leaves"]} == {"float32"}  # a row is float32 values and a flag byte
  shape = (meta["chunk_rows"], layout["row_bytes"])
  files = sorted((pathlib.Path(workdir) / "client_states" / "live").glob("live-*.bin"))
  data = np.concatenate([np.fromfile(f, np.uint8).reshape(shape) for f in files])
  clients = np.flatnonzero(row_of >= 0)
  assert len(clients) == meta["num_rows"]
  rows = data[row_of[clients]]
  assert (rows[:, -1] == 1).all()  # every client given a row was written (by whichever process ran it)
  return dict(zip(clients.tolist(), np.ascontiguousarray(rows[:, :-1]).view(np.float32)))


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
  ours, theirs = stored_states(pair), stored_states(single)
  assert sorted(ours) == sorted(theirs) and len(ours) >= 10  # the same clients hold a state
  for client, values in theirs.items():
    np.testing.assert_allclose(ours[client], values, rtol=1e-5, atol=1e-6, err_msg=f"client {client}")
  assert max(np.abs(v).max() for v in theirs.values()) > 1e-3  # control variates moved
