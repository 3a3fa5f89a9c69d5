"""The fedjaxscale command line: run an experiment config, or plot a finished run.

    fedjaxscale --config=experiments/configs/synthetic.py --workdir=/tmp/fjs/run [--config.rounds=10]
    fedjaxscale --config=experiments/configs/synthetic.py:small --workdir=/tmp/fjs/small
    fedjaxscale --config=... --workdir=/tmp/fjs/run --resume        # continue from the last checkpoint
    fedjaxscale plot /tmp/fjs/run                                     # (re)draw the PNG plots
    fedjaxscale --config=... --workdir=... --coordinator_address=host0:1234 --num_processes=2 --process_id=0

Also ``python -m fedjaxscale.main``. A config that cannot run exits with code 2 and one message,
before anything is written.
"""

import json
import sys

from absl import app, flags, logging
from ml_collections import config_flags

FLAGS = flags.FLAGS
flags.DEFINE_string("workdir", None, "Directory for outputs, checkpoints and generated data.")
config_flags.DEFINE_config_file(
  "config",
  None,
  "Experiment config: a Python file with get_config(); ':variant' after the path selects a variant.",
  lock_config=True,
)
flags.DEFINE_bool("resume", False, "Continue the run in --workdir from its newest checkpoint.")
flags.DEFINE_bool("overwrite", False, "Replace the run that --workdir holds.")
flags.DEFINE_bool("progress", True, "Show a progress bar (or periodic log lines when not on a terminal).")
flags.DEFINE_string("coordinator_address", None, "Multi-process runs: HOST:PORT of process 0.")
flags.DEFINE_integer("num_processes", None, "Multi-process runs: how many processes take part.")
flags.DEFINE_integer("process_id", None, "Multi-process runs: this process's index (0-based).")
flags.DEFINE_bool("distributed", False, "Detect the cluster (SLURM, MPI, Kubernetes, TPU pod) and join it.")
flags.DEFINE_integer("heartbeat_timeout_s", 60, "Multi-process runs: fail when a peer stops answering this long.")

USAGE_ERROR = 2


def _fail(message: str):
  print(f"fedjaxscale: error: {message}", file=sys.stderr)
  sys.exit(USAGE_ERROR)


def _parse(argv):
  try:
    rest = FLAGS(argv)
  except (flags.Error, ValueError, KeyError, AttributeError, TypeError, FileNotFoundError) as e:
    _fail(str(e).strip() or type(e).__name__)
  if FLAGS.config is None:
    _fail("--config is required, e.g. --config=experiments/configs/synthetic.py")
  if not FLAGS.workdir:
    _fail("--workdir is required")
  if FLAGS.resume and FLAGS.overwrite:
    _fail("--resume and --overwrite exclude each other")
  return rest


def main(argv):
  if len(argv) > 1:
    _fail(f"unexpected arguments {argv[1:]}; config fields are set as --config.FIELD=VALUE")
  if not FLAGS["verbosity"].present:
    logging.set_verbosity(logging.WARNING)  # checkpoint libraries log every save at INFO
  from fedjaxscale.state import StoreError
  from fedjaxscale.training import ConfigError, distributed, train_and_evaluate  # after flag parsing: keeps --help fast

  try:
    distributed.initialize(
      FLAGS.coordinator_address,
      FLAGS.num_processes,
      FLAGS.process_id,
      auto=FLAGS.distributed,
      heartbeat_timeout_s=FLAGS.heartbeat_timeout_s,
    )
  except ValueError as e:
    _fail(str(e))
  try:
    summary = train_and_evaluate(
      FLAGS.config, FLAGS.workdir, resume=FLAGS.resume, overwrite=FLAGS.overwrite, show_progress=FLAGS.progress
    )
  except (ConfigError, StoreError) as e:  # a bad config, or a client-state store that cannot be written
    _fail(str(e))
  if distributed.is_lead():
    print(json.dumps(summary, indent=1))


def run():
  """The ``fedjaxscale`` console command."""
  if len(sys.argv) > 1 and sys.argv[1] == "plot":
    from fedjaxscale.training import plots

    sys.exit(plots.main(sys.argv[2:]))
  app.run(main, flags_parser=_parse)


if __name__ == "__main__":
  run()
