"""Multi-process start-up: ``jax.distributed.initialize`` for clusters, nothing for one process.

Three ways to start a multi-process run, the same code in every process:

* explicit: ``--coordinator_address=HOST:PORT --num_processes=N --process_id=I`` (or the
  environment variables ``JAX_COORDINATOR_ADDRESS``, ``JAX_NUM_PROCESSES``, ``JAX_PROCESS_ID``);
* automatic: ``--distributed`` on SLURM, Open MPI, Kubernetes (JobSet) or a Cloud TPU pod slice,
  where JAX finds the cluster itself;
* single process: none of the above; nothing is initialised.

Every process then sees the same global devices, builds the same mesh over them, runs the same
scheduler with the same seed (so all agree on every round without talking), and reads only the
cohort lanes that land on its own devices. On CPUs, collectives go over gloo.
"""

import os

import jax

ENV_COORDINATOR = "JAX_COORDINATOR_ADDRESS"


def initialize(
  coordinator_address: str | None = None,
  num_processes: int | None = None,
  process_id: int | None = None,
  *,
  auto: bool = False,
  heartbeat_timeout_s: int = 60,
) -> bool:
  """Joins a multi-process run when asked to; returns whether one was joined.

  Args:
    coordinator_address: ``host:port`` of process 0's coordination service.
    num_processes: how many processes take part.
    process_id: this process's index, 0-based.
    auto: let JAX detect the cluster (SLURM, MPI, Kubernetes, TPU pods).
    heartbeat_timeout_s: a process whose peer stops answering for this long fails with an error
      instead of waiting forever.
  """
  coordinator_address = coordinator_address or os.environ.get(ENV_COORDINATOR) or None
  if num_processes is None and os.environ.get("JAX_NUM_PROCESSES"):
    num_processes = int(os.environ["JAX_NUM_PROCESSES"])
  if process_id is None and os.environ.get("JAX_PROCESS_ID"):
    process_id = int(os.environ["JAX_PROCESS_ID"])
  explicit = coordinator_address is not None or num_processes is not None or process_id is not None
  if not (explicit or auto):
    return False
  if explicit and None in (coordinator_address, num_processes, process_id):
    raise ValueError(
      "a multi-process run needs all of --coordinator_address, --num_processes and --process_id "
      f"(got {coordinator_address!r}, {num_processes!r}, {process_id!r})"
    )
  # CPU collectives across processes go over gloo (a no-op for accelerator collectives).
  jax.config.update("jax_cpu_collectives_implementation", "gloo")
  jax.distributed.initialize(
    coordinator_address, num_processes, process_id, heartbeat_timeout_seconds=heartbeat_timeout_s
  )
  return True


def barrier(name: str) -> None:
  """Waits until every process gets here (a no-op in single-process runs)."""
  if jax.process_count() > 1:
    from jax.experimental import multihost_utils

    multihost_utils.sync_global_devices(name)


def is_lead() -> bool:
  """Process 0 writes metrics, TensorBoard, plots and generated data."""
  return jax.process_index() == 0
