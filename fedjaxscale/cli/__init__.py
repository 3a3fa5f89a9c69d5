"""The ``fedjaxscale`` command: subcommands run, plot, compare and sweep.

    fedjaxscale run --config=experiments/configs/synthetic.py --workdir=runs/demo
    fedjaxscale plot runs/demo
    fedjaxscale compare runs/a runs/b --out runs/compare
    fedjaxscale sweep --config=experiments/configs/synthetic.py --workdir=runs/lr \\
        --sweep.algorithm.client_lr=0.01,0.03,0.1 --sweep.seed=0,1

Each subcommand has its own ``--help``; ``run`` may be left out.
"""

import sys

COMMANDS = {
  "run": "train one experiment config into --workdir (the default when no subcommand is given)",
  "plot": "(re)draw the PNG plots of a run directory",
  "compare": "one set of figures and a table over several run directories",
  "sweep": "a grid over config fields: one workdir per point, a summary table, the compare figures",
}


def usage() -> str:
  from fedjaxscale.cli.flags import flag_help

  width = max(map(len, COMMANDS))
  lines = [
    "usage: fedjaxscale [run] --config=FILE[:VARIANT] --workdir=DIR [--config.FIELD=VALUE ...] [flags]",
    "       fedjaxscale plot WORKDIR | compare RUN_DIR... --out DIR | sweep --config=... --sweep.FIELD=V1,V2 ...",
    "",
    "Federated learning simulation: whole-cohort JAX programs on a trace-driven simulated clock.",
    "",
    "subcommands (each with its own --help):",
    *(f"  {name.ljust(width)}  {text}" for name, text in COMMANDS.items()),
    "",
    "flags of run and sweep:",
    flag_help(),
    "",
    "absl's own flags (logging, verbosity): --helpfull",
  ]
  return "\n".join(lines)


def _wants_help(args) -> bool:
  return any(a in ("-h", "--help", "-help", "--helpshort") for a in args)


def main(argv=None) -> int:
  """Dispatches ``argv`` (with the program name first) to a subcommand; returns the exit code."""
  argv = list(sys.argv if argv is None else argv)
  args = argv[1:]
  command = args[0] if args and not args[0].startswith("-") else None
  if command is None or command == "help":
    if command == "help" or _wants_help(args) or not args:
      print(usage())
      return 0
    command, rest = "run", args
  else:
    rest = args[1:]
  if command == "plot":
    from fedjaxscale.training import plots

    return plots.main(rest)
  if command == "compare":
    from fedjaxscale.training import compare

    return compare.main(rest)
  if command not in ("run", "sweep"):
    print(f"fedjaxscale: error: unknown subcommand {command!r}; expected one of {sorted(COMMANDS)}", file=sys.stderr)
    return 2
  from absl import app

  from fedjaxscale.cli import common

  if command == "run":
    from fedjaxscale.cli import run as module
  else:
    from fedjaxscale.cli import sweep as module
  if _wants_help(rest):
    print(module.__doc__.strip())
    print("\nflags:")
    print(module.flag_help() if hasattr(module, "flag_help") else _flags())
    return 0
  app.run(module.main, argv=[f"fedjaxscale {command}", *rest], flags_parser=getattr(module, "parse", common.parse))
  return 0


def _flags() -> str:
  from fedjaxscale.cli.flags import flag_help

  return flag_help()
