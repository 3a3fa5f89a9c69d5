"""The command line: --help of every subcommand, config-file problems exit 2, the end-of-run summary."""

import json
import os
import subprocess
import sys

import pytest

from tests.test_training import CONFIGS

ENV = dict(os.environ, JAX_PLATFORMS="cpu")


def cli(*args, cwd=None, timeout=300):
  return subprocess.run(
    [sys.executable, "-m", "fedjaxscale.main", *map(str, args)],
    env=ENV,
    cwd=cwd,
    capture_output=True,
    text=True,
    timeout=timeout,
  )


def test_help_lists_the_flags_and_the_subcommands():
  out = cli("--help")
  assert out.returncode == 0, out.stderr
  for word in (
    "--config",
    "--workdir",
    "--[no]resume",
    "--[no]overwrite",
    "--[no]json",
    "--coordinator_address",
    "--num_processes",
  ):
    assert word in out.stdout, word
  for command in ("run", "plot", "compare", "sweep"):
    assert f"\n  {command} " in out.stdout, command


@pytest.mark.parametrize(
  "command, expected", [("run", "--workdir"), ("sweep", "--sweep.FIELD"), ("compare", "--out"), ("plot", "WORKDIR")]
)
def test_every_subcommand_has_its_own_help(command, expected):
  out = cli(command, "--help")
  assert out.returncode == 0, out.stderr
  assert expected in out.stdout


@pytest.mark.parametrize(
  "name, source, message",
  [
    ("missing.py", None, "config file missing.py does not exist"),
    ("syntax.py", "def get_config(arg=None) ::\n", "config file syntax.py:1: syntax error"),
    ("raises.py", "def get_config(arg=None):\n  raise RuntimeError('boom')\n", "raised RuntimeError: boom (line 2)"),
    ("plain.py", "def get_config(arg=None):\n  return {'rounds': 3}\n", "get_config() returned a dict"),
    ("none.py", "X = 1\n", "defines no get_config()"),
  ],
)
def test_a_bad_config_file_exits_2_with_one_message(tmp_path, name, source, message):
  if source is not None:
    (tmp_path / name).write_text(source)
  out = cli(f"--config={name}", "--workdir=run", cwd=tmp_path)
  assert out.returncode == 2, out.stderr
  assert message in out.stderr and "Traceback" not in out.stderr
  assert len(out.stderr.strip().splitlines()) == 1
  assert not (tmp_path / "run").exists()


def test_a_workdir_that_is_a_file_exits_2(tmp_path):
  (tmp_path / "afile").write_text("")
  out = cli(f"--config={CONFIGS / 'synthetic.py'}:small", f"--workdir={tmp_path / 'afile'}")
  assert out.returncode == 2, out.stderr
  assert "is a file, not a directory" in out.stderr and "Traceback" not in out.stderr


def test_unknown_subcommand_exits_2():
  out = cli("trian")
  assert out.returncode == 2 and "unknown subcommand 'trian'" in out.stderr


def test_run_prints_a_short_summary_and_keeps_the_json(tmp_path):
  # Also the end-to-end smoke test of synthetic_fedprox.py (the FedProx paper's Synthetic(1, 1)).
  workdir = tmp_path / "run"
  out = cli("run", f"--config={CONFIGS / 'synthetic_fedprox.py'}:small", f"--workdir={workdir}", "--noprogress")
  assert out.returncode == 0, out.stderr[-3000:]
  summary = json.loads((workdir / "summary.json").read_text())
  assert f"final accuracy {summary['final_accuracy']:.3f}" in out.stdout
  assert f"plots: {workdir / 'plots'}/" in out.stdout
  assert "target accuracy 0.12" in out.stdout
  assert len(out.stdout.strip().splitlines()) <= 5
  again = cli(
    f"--config={CONFIGS / 'synthetic.py'}:small",
    f"--workdir={tmp_path / 'json'}",
    "--config.rounds=1",
    "--noprogress",
    "--json",
  )
  assert again.returncode == 0, again.stderr[-3000:]
  assert json.loads(again.stdout) == json.loads((tmp_path / "json" / "summary.json").read_text())


def test_a_config_file_may_carry_a_sweep_section(tmp_path):
  from fedjaxscale.cli import configfile
  from fedjaxscale.training.sweep import check_grid

  path = tmp_path / "swept.py"
  path.write_text(
    "from fedjaxscale.training.defaults import get_base\n"
    "def get_config(arg=None):\n  return get_base()\n"
    "def get_sweep(arg=None):\n  return {'algorithm.client_lr': [0.01, 0.1], 'seed': [0, 1] if arg else [0]}\n"
  )
  config = configfile.load(str(path))
  assert check_grid(config, configfile.load_sweep(f"{path}:seeds")) == {
    "algorithm.client_lr": [0.01, 0.1],
    "seed": [0, 1],
  }
  path.write_text(path.read_text().replace("'seed': [0, 1] if arg else [0]", "'seed': [0.5]"))
  with pytest.raises(Exception, match="sweep.seed: 0.5 is not of the field's type int"):
    check_grid(config, configfile.load_sweep(str(path)))


def test_run_called_in_an_interactive_session_raises_system_exit():
  """The console command ends its process without the interpreter's teardown; called from an
  interactive session or a notebook it raises SystemExit as sys.exit would, and the session lives
  (a process of its own: the CLI defines absl flags, which other tests' modules define too)."""
  code = (
    "import sys\n"
    "sys.ps1 = '>>> '\n"
    "sys.argv = ['fedjaxscale', '--help']\n"
    "from fedjaxscale import main\n"
    "try:\n"
    "  main.run()\n"
    "except SystemExit as e:\n"
    "  print('still running after SystemExit', e.code)\n"
  )
  out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
  assert out.returncode == 0, out.stderr[-2000:]
  assert "subcommands" in out.stdout and out.stdout.strip().endswith("still running after SystemExit 0")
