"""What ``run`` and ``sweep`` share: exit code 2 with one message, flag parsing, the summary lines."""

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


def summary_lines(summary: dict, workdir) -> list[str]:
  """A finished run's summary in a few human-readable lines."""

  def pct(x):
    return "n/a" if x is None else f"{x:.3f}"

  lines = [
    f"final accuracy {pct(summary.get('final_accuracy'))} (round {summary.get('final_accuracy_round')}), "
    f"best {pct(summary.get('best_accuracy'))} (round {summary.get('best_accuracy_round')})",
  ]
  quantiles = ("client_accuracy_p10", "client_accuracy_p50", "client_accuracy_p90")

  def spread(d, prefix=""):
    if d.get(prefix + quantiles[0]) is None:
      return ""
    return ", per-client p10/p50/p90 " + "/".join(pct(d.get(prefix + q)) for q in quantiles)

  personal = summary.get("final_personal")
  if personal:  # eval_personal: each client's own model, next to the global one
    lines.append(f"global model: accuracy {pct(summary.get('final_accuracy'))}{spread(summary, 'final_')}")
    lines.append(f"personalized: accuracy {pct(personal.get('accuracy'))}{spread(personal)}")
  target = summary.get("target_accuracy")
  if target:
    if summary.get("time_to_target_hours") is not None:
      lines.append(
        f"target accuracy {target:g} reached after {summary['time_to_target_hours']:.2f} simulated hours "
        f"(round {summary['time_to_target_round']})"
      )
    else:
      lines.append(f"target accuracy {target:g} not reached")
  wall = summary.get("wall_s")
  lines.append(
    f"{summary.get('rounds')} rounds, {summary.get('simulated_hours', 0):.2f} simulated hours, "
    f"{summary.get('clients_trained')} clients trained, wall time {wall:.1f} s"
    if wall is not None
    else f"{summary.get('rounds')} rounds"
  )
  lines.append(f"plots: {pathlib.Path(workdir) / 'plots'}/  summary: {pathlib.Path(workdir) / 'summary.json'}")
  return lines
