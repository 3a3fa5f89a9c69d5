"""The quick-start notebook executes top to bottom (nbclient) on the CPU, with this Python.

A kernelspec pointing at ``sys.executable`` is written into a temporary ``JUPYTER_PATH``
directory, so the kernel is this environment's Python even in a fresh CI virtualenv with no
Jupyter setup, or on a machine whose global ``python3`` kernel is another interpreter.
"""

import json
import os
import pathlib
import sys

import pytest

nbformat = pytest.importorskip("nbformat")
nbclient = pytest.importorskip("nbclient")
pytest.importorskip("ipykernel")

REPO = pathlib.Path(__file__).resolve().parents[1]
NOTEBOOK = REPO / "experiments" / "notebooks" / "quickstart.ipynb"
KERNEL_NAME = "fedjaxscale-test"
CELL_TIMEOUT_S = 300


def _kernel_env(tmp_path: pathlib.Path) -> dict[str, str]:
  env = dict(os.environ)
  env["JAX_PLATFORMS"] = "cpu"
  # A user's kernel sees the real devices: drop the forced host devices of tests/conftest.py.
  flags = [f for f in env.get("XLA_FLAGS", "").split() if not f.startswith("--xla_force_host_platform_device_count")]
  if flags:
    env["XLA_FLAGS"] = " ".join(flags)
  else:
    env.pop("XLA_FLAGS", None)
  env["MPLBACKEND"] = "Agg"
  env["HOME"] = str(tmp_path / "home")  # no user IPython profile or matplotlibrc
  env["TMPDIR"] = str(tmp_path / "tmp")  # the notebook's run directory (tempfile.mkdtemp) lands here
  for name in ("home", "tmp"):
    (tmp_path / name).mkdir()
  return env


def _install_kernelspec(jupyter_dir: pathlib.Path) -> None:
  spec_dir = jupyter_dir / "kernels" / KERNEL_NAME
  spec_dir.mkdir(parents=True)
  spec = {
    "argv": [sys.executable, "-m", "ipykernel_launcher", "-f", "{connection_file}"],
    "display_name": f"Python 3 ({sys.executable})",
    "language": "python",
  }
  (spec_dir / "kernel.json").write_text(json.dumps(spec))


def _text(output) -> str:
  if output.get("output_type") == "stream":
    return output.get("text", "")
  return output.get("data", {}).get("text/plain", "")


def test_quickstart_notebook_executes(tmp_path, monkeypatch):
  nb = nbformat.read(NOTEBOOK, as_version=4)
  assert all(not c.get("outputs") and c.get("execution_count") is None for c in nb.cells if c.cell_type == "code"), (
    "store the notebook without outputs (clear them before committing)"
  )

  jupyter_dir = tmp_path / "jupyter"
  _install_kernelspec(jupyter_dir)
  monkeypatch.setenv("JUPYTER_PATH", str(jupyter_dir))
  run_dir = tmp_path / "cwd"  # outside the repository, as for a user
  run_dir.mkdir()

  # First, a cell that reports the kernel's interpreter.
  nb.cells.insert(0, nbformat.v4.new_code_cell("import sys; print('KERNEL_PYTHON=' + sys.executable)"))
  client = nbclient.NotebookClient(
    nb, timeout=CELL_TIMEOUT_S, kernel_name=KERNEL_NAME, resources={"metadata": {"path": str(run_dir)}}
  )
  client.execute(env=_kernel_env(tmp_path))  # raises CellExecutionError on any failing cell
  if os.environ.get("FEDJAXSCALE_NOTEBOOK_OUT"):  # to look at the executed notebook
    nbformat.write(nb, os.environ["FEDJAXSCALE_NOTEBOOK_OUT"])

  code_cells = [c for c in nb.cells if c.cell_type == "code"]
  texts = ["".join(_text(o) for o in c.outputs) for c in code_cells]
  errors = [o for c in code_cells for o in c.outputs if o.get("output_type") == "error"]
  assert not errors, errors
  everything = "\n".join(texts)

  assert f"KERNEL_PYTHON={sys.executable}" in texts[0]
  # The install cell found the package already installed.
  assert "fedjaxscale from" in everything and "pip install" not in everything
  # The summary was printed, with its keys.
  for key in (
    "rounds",
    "simulated_hours",
    "wall_s",
    "clients_per_s",
    "best_accuracy",
    "final_accuracy",
    "time_to_target_hours",
  ):
    assert f'"{key}"' in everything, key
  assert '"rounds": 4' in everything
  # The metrics table: a header and one row per round.
  table = next(t for t in texts if "train loss" in t)
  rows = [line.split() for line in table.splitlines() if line.split() and line.split()[0].isdigit()]
  assert [int(r[0]) for r in rows] == [1, 2, 3, 4]
  # The plots were displayed inline as PNG images.
  images = [o for c in code_cells for o in c.outputs if "image/png" in o.get("data", {})]
  assert len(images) >= 5, len(images)
  for name in ("accuracy_vs_round.png", "gantt.png", "online_clients.png"):
    assert name in everything, name
  # The pure-function cell ran three rounds.
  assert [f"round {i}: train loss" in everything for i in range(3)] == [True] * 3
  # The run went into a temporary directory; nothing was written into the working directory.
  assert list((tmp_path / "tmp").glob("fedjaxscale-quickstart-*/run/summary.json"))
  assert not any(run_dir.iterdir()), list(run_dir.iterdir())
