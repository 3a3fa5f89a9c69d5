"""The fedjaxscale command line (see ``fedjaxscale --help``): subcommands run, plot, compare, sweep.

    fedjaxscale --config=experiments/configs/synthetic.py --workdir=runs/demo [--config.rounds=10]
    fedjaxscale plot runs/demo
    fedjaxscale compare runs/a runs/b --out runs/compare
    fedjaxscale sweep --config=experiments/configs/synthetic.py --workdir=runs/lr --sweep.algorithm.client_lr=0.01,0.1

Also ``python -m fedjaxscale.main``. A config that cannot run exits with code 2 and one message,
before anything is written. The subcommands live in ``fedjaxscale/cli/``.
"""

import atexit
import logging
import os
import sys
import threading


def run():
  """The ``fedjaxscale`` console command."""
  from fedjaxscale.cli import main

  try:
    code = main(sys.argv)
  except SystemExit as e:  # absl's app.run ends with sys.exit
    code = e.code
  if hasattr(sys, "ps1") or sys.flags.interactive or "ipykernel" in sys.modules:
    sys.exit(code)  # called from an interactive session or a notebook: never end its process
  fast_exit(code)


def fast_exit(code) -> None:
  """Exits with ``code`` as ``sys.exit`` would, without the interpreter's teardown.

  Freeing JAX's, flax's, orbax's and matplotlib's modules one object at a time took 0.3-0.6 s
  after every command on the project's 2-core machine (an eighth of a warm ``make demo``), and
  nothing in it writes anything. What a normal exit does that matters is done here first: the
  threads that are not daemons finish (orbax's background writes), the ``atexit`` callbacks run
  (JAX's distributed shutdown, logging's flush), and the standard streams are flushed.
  """
  if code is None:
    status = 0
  elif isinstance(code, int):
    status = code
  else:  # sys.exit("message"): the message goes to stderr, the status is 1
    print(code, file=sys.stderr)
    status = 1
  for thread in threading.enumerate():
    if thread is not threading.current_thread() and not thread.daemon:
      thread.join()
  atexit._run_exitfuncs()  # pylint: disable=protected-access
  logging.shutdown()
  for stream in (sys.stdout, sys.stderr):
    try:
      stream.flush()
    except (OSError, ValueError):  # a closed pipe or stream: nothing more can be written to it
      pass
  os._exit(status)


if __name__ == "__main__":
  run()
