"""``fedjaxscale sweep``: a grid over config fields, one workdir per point, a table and figures.

    fedjaxscale sweep --config=experiments/configs/synthetic.py --workdir=runs/lr \\
        --sweep.algorithm.client_lr=0.01,0.03,0.1 --sweep.seed=0,1,2
    fedjaxscale sweep --config=... --workdir=runs/lr --resume          # continue an interrupted sweep

Each --sweep.FIELD=V1,V2,... adds an axis (values take the field's type); a config file may
also define get_sweep(variant) -> {field: [values]}. --config.FIELD=VALUE sets the base config.
Points that differ only in learning rates or server settings (and share seed, selection and
traces) train together as one compiled program; --nostack runs them one at a time. Writes
WORKDIR/points/NAME/ (one run each), WORKDIR/summary.csv and .md, WORKDIR/compare/ (figures)
and WORKDIR/tensorboard/ (hparams: `tensorboard --logdir WORKDIR`).
"""

import json
import pathlib

from absl import flags

from fedjaxscale.cli import common, configfile
from fedjaxscale.cli.flags import FLAGS

flags.DEFINE_bool("stack", True, "sweep: train points that share a system plan as one vmapped program.")

_GRID: list[tuple[str, str]] = []


def flag_help() -> str:
  from fedjaxscale.cli.flags import flag_help as run_flags

  own = FLAGS.module_help(__name__).split("\n", 2)[-1]
  return (
    "  --sweep.FIELD: comma-separated values of config field FIELD (one grid axis each)\n" + own + "\n" + run_flags()
  )


def parse(argv):
  """Takes the --sweep.FIELD=VALUES arguments out, then parses the rest as ``run`` does."""
  rest = [argv[0]]
  for arg in argv[1:]:
    if arg.startswith("--sweep."):
      field, eq, values = arg[len("--sweep.") :].partition("=")
      if not eq or not field:
        common.fail(f"{arg}: expected --sweep.FIELD=V1,V2,...")
      _GRID.append((field, values))
    else:
      rest.append(arg)
  return common.parse(rest)


def main(argv):
  if len(argv) > 1:
    common.fail(f"unexpected arguments {argv[1:]}; grid axes are --sweep.FIELD=V1,V2,...")
  if FLAGS.coordinator_address or FLAGS.num_processes or FLAGS.distributed:
    common.fail("a sweep runs in one process; run multi-process points one by one with `fedjaxscale run`")
  from fedjaxscale.training import ConfigError
  from fedjaxscale.training.sweep import check_grid, parse_grid, run_sweep

  config = FLAGS.config
  try:
    section = configfile.load_sweep(FLAGS["config"].config_filename)
    grid = check_grid(config, section) if section else {}
    grid.update(parse_grid(config, _GRID) if _GRID else {})
    rows = run_sweep(
      config,
      grid,
      FLAGS.workdir,
      resume=FLAGS.resume,
      overwrite=FLAGS.overwrite,
      stack=FLAGS.stack,
      show_progress=FLAGS.progress,
    )
  except (ConfigError, configfile.ConfigFileError) as e:
    common.fail(str(e))
  root = pathlib.Path(FLAGS.workdir)
  if FLAGS.json:
    print(json.dumps(rows, indent=1))
  else:
    print((root / "summary.md").read_text(), end="")
    print(f"{len(rows)} points in {root / 'points'}/; figures in {root / 'compare'}/; table {root / 'summary.csv'}")
