"""What ``run`` and ``sweep`` share: exit code 2 with one message, flag parsing."""

import pathlib
import sys

from absl import flags, logging

from fedjaxscale.cli import configfile
from fedjaxscale.cli.flags import FLAGS

USAGE_ERROR = 2


def fail(message: str):
  print(f"fedjaxscale: error: {message}", file=sys.stderr)
  sys.exit(USAGE_ERROR)


def parse(argv):
  """absl's flag parsing, with every config-file and flag problem turned into exit code 2."""
  spec = configfile.config_spec(argv[1:])
  if spec is not None:
    try:
      configfile.load(spec)
    except configfile.ConfigFileError as e:
      fail(str(e))
  try:
    rest = FLAGS(argv)
  except (flags.Error, ValueError, KeyError, AttributeError, TypeError, OSError) as e:
    fail(str(e).strip() or type(e).__name__)
  if FLAGS.config is None:
    fail("--config is required, e.g. --config=experiments/configs/synthetic.py")
  if not FLAGS.workdir:
    fail("--workdir is required")
  workdir = pathlib.Path(FLAGS.workdir).expanduser()
  if workdir.exists() and not workdir.is_dir():
    fail(f"--workdir {FLAGS.workdir} is a file, not a directory")
  if FLAGS.resume and FLAGS.overwrite:
    fail("--resume and --overwrite exclude each other")
  if not FLAGS["verbosity"].present:
    logging.set_verbosity(logging.WARNING)  # checkpoint libraries log every save at INFO
  return rest


def start_distributed():
  from fedjaxscale.training import distributed  # after flag parsing: keeps --help fast

  try:
    distributed.initialize(
      FLAGS.coordinator_address,
      FLAGS.num_processes,
      FLAGS.process_id,
      auto=FLAGS.distributed,
      heartbeat_timeout_s=FLAGS.heartbeat_timeout_s,
    )
  except ValueError as e:
    fail(str(e))
  return distributed
