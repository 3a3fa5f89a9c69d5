"""The flags of ``fedjaxscale run`` and ``fedjaxscale sweep`` (absl), defined once here."""

from absl import flags
from ml_collections import config_flags

FLAGS = flags.FLAGS
MODULE = __name__  # what --help lists

flags.DEFINE_string("workdir", None, "Directory for outputs, checkpoints and generated data.")
config_flags.DEFINE_config_file(
  "config",
  None,
  "Experiment config: a Python file with get_config(); ':variant' after the path selects a variant. "
  "Fields are set as --config.FIELD=VALUE.",
  lock_config=True,
)
flags.DEFINE_bool("resume", False, "Continue the run (or sweep) in --workdir from its newest checkpoint.")
flags.DEFINE_bool("overwrite", False, "Replace the run (or sweep) that --workdir holds.")
flags.DEFINE_bool("progress", True, "Show a progress bar (or periodic log lines when not on a terminal).")
flags.DEFINE_bool("json", False, "Print the summary as JSON (for scripts) instead of the human-readable lines.")
flags.DEFINE_string("coordinator_address", None, "Multi-process runs: HOST:PORT of process 0.")
flags.DEFINE_integer("num_processes", None, "Multi-process runs: how many processes take part.")
flags.DEFINE_integer("process_id", None, "Multi-process runs: this process's index (0-based).")
flags.DEFINE_bool("distributed", False, "Detect the cluster (SLURM, MPI, Kubernetes, TPU pod) and join it.")
flags.DEFINE_integer("heartbeat_timeout_s", 60, "Multi-process runs: fail when a peer stops answering this long.")


def flag_help() -> str:
  """The flags above, as absl formats them (absl's own --help lists only the main module's)."""
  return FLAGS.module_help(MODULE).split("\n", 2)[-1]  # less the module-name header
