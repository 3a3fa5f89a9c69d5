"""The run's client states: the store between rounds, its size check and its checkpoints.

Stateful algorithms (``scaffold``, ``ditto``) keep one state per client in a
``fedjaxscale.state.ClientStateStore`` under ``WORKDIR/client_states``: ``live/`` (a
memory-mapped store's chunks) and ``checkpoints/`` (the versioned chunks the run's checkpoints
name). The store's size is checked in ``setup.build``, before anything is written.
"""

import pathlib

import jax
import numpy as np
import optax

from fedjaxscale.algorithms.ditto import ditto
from fedjaxscale.algorithms.scaffold import scaffold
from fedjaxscale.algorithms.stateful import StatefulAlgorithm
from fedjaxscale.data import gather_cohort
from fedjaxscale.engine.personalized import adapt, adaptation_program, evaluate_per_client
from fedjaxscale.engine.state import local_clients
from fedjaxscale.state import (
  STORAGE_DTYPES,
  ClientStateStore,
  StateLayout,
  StoreError,
  StoreTooLarge,
  check_fits,
  collect,
  estimate,
  restore_chunks,
  save_chunks,
)

STATEFUL = ("scaffold", "ditto")
DIRECTORY = "client_states"


def is_stateful(algorithm) -> bool:
  return isinstance(algorithm, StatefulAlgorithm)


def check_config(config, require) -> None:
  """Checks the stateful algorithms' and the store's fields (``require(ok, field, message)``)."""
  s = config.state
  require(
    s.backing in ("auto", "memory", "memmap"),
    "state.backing",
    f"must be 'auto', 'memory' or 'memmap', got {s.backing!r}",
  )
  require(
    s.storage_dtype in STORAGE_DTYPES,
    "state.storage_dtype",
    f"must be one of {STORAGE_DTYPES}, got {s.storage_dtype!r}",
  )
  require(s.budget_mb >= 0, "state.budget_mb", f"must be >= 0 (0: no budget), got {s.budget_mb}")
  require(s.memory_limit_mb > 0, "state.memory_limit_mb", f"must be > 0, got {s.memory_limit_mb}")
  require(
    config.eval_personal in ("", "personal", "adapt"),
    "eval_personal",
    f"must be '', 'personal' or 'adapt', got {config.eval_personal!r}",
  )
  require(
    config.eval_personal != "personal" or config.algorithm.name == "ditto",
    "eval_personal",
    f"'personal' evaluates Ditto's personal models; algorithm.name is {config.algorithm.name!r} (use 'adapt')",
  )
  require(config.eval_adapt_steps >= 1, "eval_adapt_steps", f"must be >= 1, got {config.eval_adapt_steps}")
  require(config.eval_adapt_lr >= 0, "eval_adapt_lr", f"must be >= 0, got {config.eval_adapt_lr}")
  if config.algorithm.name in STATEFUL:
    require(
      config.system.mode == "sync",
      "system.mode",
      f"{config.algorithm.name} keeps client states and runs synchronous rounds only, got {config.system.mode!r}",
    )
    a = config.algorithm
    require(
      a.client_lr_decay == 1.0,
      "algorithm.client_lr_decay",
      f"is not supported by {a.name} (its client steps use a constant client_lr), got {a.client_lr_decay}",
    )
    require(
      a.name != "scaffold" or a.client_momentum == 0,
      "algorithm.client_momentum",
      f"scaffold's local steps are plain SGD (Algorithm 1), got momentum {a.client_momentum}",
    )
    require(config.algorithm.lam >= 0, "algorithm.lam", f"must be >= 0, got {config.algorithm.lam}")
    require(
      config.algorithm.personal_lr >= 0, "algorithm.personal_lr", f"must be >= 0, got {config.algorithm.personal_lr}"
    )


def build_algorithm(config, model, engine, num_clients: int) -> StatefulAlgorithm:
  a = config.algorithm
  if a.name == "scaffold":
    return scaffold(model, a.client_lr, a.server_lr, num_clients=num_clients, weighting=a.weighting, engine=engine)
  client_opt = optax.sgd(a.client_lr, momentum=a.client_momentum or None)
  personal = optax.sgd(a.personal_lr or a.client_lr)
  server = optax.sgd(a.server_lr, momentum=a.server_momentum or None)
  return ditto(model, client_opt, personal, server, lam=a.lam, weighting=a.weighting, engine=engine)


def layout_of(config, algorithm: StatefulAlgorithm, model) -> StateLayout:
  server = algorithm.init(model.init(jax.random.key(0)))
  return StateLayout.from_spec(algorithm.state_spec(server), config.state.storage_dtype)


def plan_store(config, algorithm, model, num_clients: int, workdir: pathlib.Path):
  """The store's estimate (raises ``StoreTooLarge`` with the numbers when it cannot fit)."""
  layout = layout_of(config, algorithm, model)
  s = config.state
  most = config.rounds * int(np.ceil(config.clients_per_round * max(config.system.overcommit, 1.0)))
  est = estimate(
    layout,
    num_clients,
    most,
    backing=s.backing,
    memory_limit_bytes=int(s.memory_limit_mb * 2**20),
    checkpoints_kept=2 if config.checkpoint_every else 0,
  )
  check_fits(est, int(s.budget_mb * 2**20) if s.budget_mb else None, workdir, "state.budget_mb")
  return layout, est


class RunStates:
  """The store of one run, and the rounds that read and write it."""

  def __init__(self, config, workdir: pathlib.Path, algorithm: StatefulAlgorithm, model, num_clients: int):
    layout, est = plan_store(config, algorithm, model, num_clients, workdir)
    self.directory = workdir / DIRECTORY
    if jax.process_count() > 1 and est.backing != "memmap":
      raise StoreTooLarge(
        "state.backing: a multi-process run needs state.backing='memmap' on a workdir every process shares"
      )
    self.algorithm = algorithm
    self.estimate = est
    lead = jax.process_index() == 0
    self.store = ClientStateStore(layout, num_clients, est.backing, self.directory / "live", clear=lead)
    _sync("client-state store cleared")
    self.kept: list[dict] = []

  def apply(self, server_state, cohort, members: np.ndarray, key):
    """One round of the stateful algorithm: gather, run, scatter."""
    members = np.asarray(members, np.int64)
    # Each process reads only the rows of the clients its own devices run; the others stay
    # zero (never read: each process places only its own lanes).
    local = local_clients(self.algorithm.engine, cohort)
    if local.all():
      states, fresh = self.store.gather(members)
    else:
      mine, fresh_mine = self.store.gather(members[local])
      states = jax.tree.map(lambda x: np.zeros((len(members),) + x.shape[1:], x.dtype), mine)
      for full, part in zip(jax.tree.leaves(states), jax.tree.leaves(mine)):
        full[local] = part
      fresh = np.ones(len(members), bool)
      fresh[local] = fresh_mine
    server_state, diagnostics, new = self.algorithm.apply(server_state, cohort, key, states, fresh)
    # Rows are allocated for every member (all processes agree on them); each process writes
    # only its own clients' (``written`` is False for the rest).
    self.store.scatter(members, new.states, new.written & local)
    if jax.process_count() > 1:  # every process's rows are in the shared files before anyone reads
      self.store.flush()
      _sync("client states scattered")
    return server_state, {**diagnostics, "states_stored": self.store.num_stored}

  def save(self, round_: int) -> dict:
    """Writes the changed chunks and returns the index for the run's checkpoint."""
    if jax.process_count() > 1:
      self.store.flush()
      _sync("client states flushed")
    previous = self.kept[-1] if self.kept else None
    # Every process computes the same index; only the lead writes the (shared) chunk files.
    lead = jax.process_index() == 0
    index = save_chunks(self.store, self.directory / "checkpoints", round_, previous, write=lead)
    self.kept = (self.kept + [index])[-2:]
    if jax.process_index() == 0:
      collect(self.directory / "checkpoints", self.kept)
    return index

  def restore(self, index: dict) -> None:
    try:
      restore_chunks(self.store, index, self.directory / "checkpoints")
    except StoreError as e:
      raise StoreError(f"--resume: {e}") from None
    self.store.flush()
    _sync("client states restored")
    self.kept = [index]


def _sync(name: str) -> None:
  if jax.process_count() > 1:
    from jax.experimental import multihost_utils

    multihost_utils.sync_global_devices(name)


class PersonalEvaluation:
  """Evaluates each test client with its own model (Ditto's personal one, or the global one fine-tuned).

  Test clients are matched to training clients by id; those without training data are left out.
  """

  def __init__(self, config, parts):
    self.config, self.p = config, parts
    self.engine = parts.engine
    test_ids = np.asarray(parts.test.client_ids)
    train_ids = set(np.asarray(parts.train.client_ids).tolist())
    keep = np.array([c in train_ids for c in test_ids.tolist()], bool)
    self.test_index = np.flatnonzero(keep)
    self.train_index = np.asarray(parts.train.client_index(test_ids[keep]), np.int64)
    lr = config.eval_adapt_lr or config.algorithm.client_lr
    self.program = adaptation_program(parts.model, optax.sgd(lr))

  def __call__(self, server_state, run_states, key, round_: int) -> dict:
    if self.config.eval_personal == "personal":
      states, fresh = run_states.store.gather(self.train_index)
      # A client never selected has no personal model yet: it would start from the global one.
      glob = jax.device_get(server_state.params)
      params = jax.tree.map(lambda s, g: np.where(fresh.reshape((-1,) + (1,) * g.ndim), g[None], s), states, glob)
    else:
      seed = (self.config.seed * 1_000_003 + round_) * 1_000_003 - 1
      cohort = gather_cohort(
        self.p.train,
        self.train_index,
        self.config.local.batch_size,
        local_steps=self.config.eval_adapt_steps,
        seed=seed,
        lane_multiple=self.engine.client_multiple,
      )
      params = adapt(self.engine, self.program, server_state.params, cohort, key)
    return evaluate_per_client(self.p.model, params, self.p.test, self.test_index).summary()


__all__ = [
  "STATEFUL",
  "PersonalEvaluation",
  "RunStates",
  "build_algorithm",
  "check_config",
  "is_stateful",
  "plan_store",
]
