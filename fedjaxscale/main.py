"""The fedjaxscale command line (see ``fedjaxscale --help``): subcommands run, plot, compare, sweep.

    fedjaxscale --config=experiments/configs/synthetic.py --workdir=runs/demo [--config.rounds=10]
    fedjaxscale plot runs/demo
    fedjaxscale compare runs/a runs/b --out runs/compare
    fedjaxscale sweep --config=experiments/configs/synthetic.py --workdir=runs/lr --sweep.algorithm.client_lr=0.01,0.1

Also ``python -m fedjaxscale.main``. A config that cannot run exits with code 2 and one message,
before anything is written. The subcommands live in ``fedjaxscale/cli/``.
"""

import sys


def run():
  """The ``fedjaxscale`` console command."""
  from fedjaxscale.cli import main

  sys.exit(main(sys.argv))


if __name__ == "__main__":
  run()
