"""The cohort executor: one compiled program maps a client update over a whole cohort.

``Engine.run(program, shared, cohort, rng)`` computes, for the real clients k of the cohort,

    update_sum = sum_k w_k * u_k,    weight_sum = sum_k w_k

where ``(u_k, w_k, metrics_k)`` is client k's ``ClientOutput`` after its local steps, with
``w_k`` the client's weight times the cohort's per-client multiplier. A client whose update or
weight is not finite is left out of both sums (and counted), so one diverged client cannot
poison the round. Only these sums (one model-sized tree) and per-client scalars leave the
devices.

Where the pieces live: ``program`` (``ClientProgram``, ``run_client``, weighing), ``placement``
(mesh, transfers, memory budget), ``lanes`` (a chunk's host arrays), ``compiled`` (the compiled
round of the ``vmap`` backend: ``shard_map``, ``psum``, chunking, the compile cache) and
``per_client`` (the ``loop`` and ``debug`` backends).

Backends:
  * ``vmap`` (default): lanes (see ``core.cohort``) run inside ``jax.shard_map`` over a 1-D
    ``clients`` mesh of every device, mapped by an execution strategy (``strategies``: ``vmap``
    of all lanes, one lane after another, or groups of lanes; chosen by timing under
    ``strategy="auto"``); each device reduces its own lanes and a ``psum`` joins them. A lane holding one client runs ``init``, a ``scan`` of ``step`` and ``finish``;
    a lane of packed clients restarts ``init`` where a client starts and adds the weighted
    update where one ends. Parts larger than the memory budget run as chunks of one shape,
    added into a donated on-device accumulator.
  * ``loop``: one jitted client at a time (the baseline the benchmarks compare with, and a
    debugging aid whose numbers must equal ``vmap``'s).
  * ``debug``: no ``jit`` at all; an exception names the client that raised it.
"""

import dataclasses
import logging
from collections.abc import Mapping

import jax
import numpy as np
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

from fedjaxscale.core.cohort import Cohort
from fedjaxscale.core.deferred import Deferred
from fedjaxscale.core.types import PRNGKey, PyTree
from fedjaxscale.engine.compiled import (
  CPU_LANES_PER_DEVICE,
  CPU_UNROLL_STEPS,
  CompiledRounds,
)
from fedjaxscale.engine.lanes import per_client
from fedjaxscale.engine.per_client import PerClientRunner
from fedjaxscale.engine.placement import (
  CLIENTS,
  Resident,
  default_memory_budget,
  default_mesh,
  feature_identity,
  place_replicated,
  put_host,
  put_rows,
  replicated_arguments,
)
from fedjaxscale.engine.program import Aggregate, ClientError, ClientOutput, ClientProgram, run_client
from fedjaxscale.engine.strategies import parse_strategy

BACKENDS = ("vmap", "loop", "debug")
RESIDENT_FRACTION = 0.25  # resident training features may use this share of the memory budget

log = logging.getLogger(__name__)

# Re-exported: the engine's import path before it was split into modules.
__all__ = [
  "BACKENDS",
  "CLIENTS",
  "CPU_LANES_PER_DEVICE",
  "CPU_UNROLL_STEPS",
  "Aggregate",
  "ClientError",
  "ClientOutput",
  "ClientProgram",
  "Engine",
  "EngineStats",
  "default_mesh",
  "place_replicated",
  "put_host",
  "put_rows",
  "run_client",
]


@dataclasses.dataclass
class EngineStats:
  """Counters a caller (or a test) can read: compiles, chunks and example slots computed."""

  compiles: int = 0
  chunks: int = 0
  computed_example_steps: int = 0
  real_example_steps: int = 0

  @property
  def padding_efficiency(self) -> float:
    return self.real_example_steps / self.computed_example_steps if self.computed_example_steps else 1.0


class Engine:
  """Runs a client program over a cohort and reduces it on the devices.

  Args:
    backend: ``'vmap'`` (default), ``'loop'`` or ``'debug'``.
    mesh: a mesh with a ``clients`` axis; default: every device.
    max_clients_per_chunk: the most lanes (clients, or packed lanes of clients) one compiled
      call trains. Default: as many as fit ``memory_budget_bytes``, found from XLA's memory
      analysis of the compiled program.
    memory_budget_bytes: default: half the accelerator's memory (a quarter of RAM on CPU). On
      CPU, chunks also hold at most 1,024 lanes per device by default: measured 2.5x faster than
      one 10,240-lane chunk for logistic regression (caches), at no cost in correctness.
    scan_unroll: ``unroll`` of the local-step ``lax.scan`` of every lane. Default: on CPU,
      unroll scans of up to 8 steps fully (XLA:CPU runs convolutions inside a loop body several
      times slower than unrolled: jax-ml/jax#12868), else 1.
    strategy: how a device runs its lanes (``vmap`` backend only; the per-client backends
      accept and ignore it)::

        strategy := "auto" | lanes ["+" conv]
        lanes    := "vmap" | "map" | "map:" k     (k >= 1)
        conv     := "lax" | "patches"

      ``"vmap"``: all of a device's lanes at once; ``"map"``: one lane after another;
      ``"map:k"``: k lanes at a time (``vmap``ped), groups one after another; ``"+patches"``
      traces convolutions as patches x matmul (``models.conv``), ``"+lax"`` as
      ``lax.conv_general_dilated``. ``"auto"`` (default) times a short list of candidates
      (``strategies.candidates``: convolution variants only for programs that convolve) on the
      first chunk of every new shape, keeps the fastest with the compiled program and records
      the choice in ``strategy_choices``; a shape that differs from a timed one only in its
      lane count reuses that winner (each candidate is a compile). The client-state path
      (``engine/state.py``) times ``vmap`` against ``map:4`` on CPU for one client a lane, and
      runs packed lanes ``map`` (each client finished once). All strategies give the same results to float
      rounding, not bit for bit, and timing can choose differently from one run to the next:
      name a strategy where runs must agree to the last bit. An unknown value raises
      ``ValueError`` naming it.

  Example::

    engine = Engine()
    aggregate, per_client = engine.run(program, params, cohort, jax.random.key(0))
  """

  def __init__(
    self,
    backend: str = "vmap",
    mesh: jax.sharding.Mesh | None = None,
    max_clients_per_chunk: int | None = None,
    memory_budget_bytes: int | None = None,
    scan_unroll: int | bool | None = None,
    strategy: str = "auto",
  ):
    self.strategy = strategy
    parsed = parse_strategy(strategy)  # raises ValueError naming a bad value
    if backend not in BACKENDS:
      raise ValueError(f"unknown engine backend {backend!r}; expected one of {BACKENDS}")
    if max_clients_per_chunk is not None and max_clients_per_chunk < 1:
      raise ValueError(f"max_clients_per_chunk must be >= 1, got {max_clients_per_chunk}")
    self.backend = backend
    self.mesh = mesh if mesh is not None else (default_mesh() if backend == "vmap" else None)
    if self.mesh is not None and CLIENTS not in self.mesh.axis_names:
      raise ValueError(f"the engine's mesh needs a {CLIENTS!r} axis, got axes {self.mesh.axis_names}")
    self.max_clients_per_chunk = max_clients_per_chunk
    self.memory_budget_bytes = memory_budget_bytes
    self.scan_unroll = scan_unroll
    self.stats = EngineStats()
    self.lane_shapes: set[tuple[int, int]] = set()  # (lanes, steps) of the chunks compiled so far
    self._declined: dict = {}  # identities of memory-mapped features too large to keep resident
    if backend == "vmap":
      self._runner = CompiledRounds(
        self.mesh, self.stats, self.lane_shapes, max_clients_per_chunk, memory_budget_bytes, scan_unroll, parsed
      )
    else:
      self._runner = PerClientRunner(self.stats, jit=backend == "loop")

  @property
  def client_multiple(self) -> int:
    """Each part's lane count is padded to a multiple of this (the mesh's ``clients`` size)."""
    return int(self.mesh.shape[CLIENTS]) if self.backend == "vmap" else 1

  @property
  def strategy_choices(self) -> list[dict]:
    """One plain dict per compiled shape: ``shape`` (lanes, steps, batch, packed, devices,
    resident; ``state: True`` for a client-state program), ``candidates`` (strategy -> seconds for one chunk; empty when the strategy was
    given or only one candidate applies) and ``chosen``; ``timed_at``, the shape whose timing
    chose it, when another lane count of the same program was timed. Empty for the per-client
    backends."""
    if self.backend != "vmap":
      return []
    return [dict(c, shape=dict(c["shape"]), candidates=dict(c["candidates"])) for c in self._runner.choices]

  def adopt_strategy_choices(self, choices: list[dict]) -> None:
    """Runs the shapes of ``choices`` (an earlier ``strategy_choices``, e.g. from a checkpoint)
    with the strategies chosen then, without timing candidates again, so a resumed run equals
    one that never stopped. Shapes not in ``choices`` are tuned as usual; an explicit
    ``strategy`` still wins; a no-op for the per-client backends."""
    if self.backend == "vmap":
      self._runner.adopt(choices)

  def make_resident(self, features: Mapping[str, np.ndarray]) -> bool:
    """Keeps ``features`` (e.g. a training ``FederatedDataset.features``) on every device.

    Cohorts whose parts read these very arrays (the same objects: ``make_cohort`` on a dataset
    passes ``dataset.features`` through) are then gathered on the devices from their row
    indices, so a round sends only int32 indices, not examples. A single-process engine does
    this by itself for memory-mapped features (a ``FederatedDataset``'s) the first time a
    cohort reads them. Each process places the whole
    arrays (every process must pass the same features). Nothing is kept, and False returned,
    when they do not fit ``RESIDENT_FRACTION`` of the memory budget (on CPU the devices share
    the host's RAM, so every device's copy counts), for a per-client backend, or when there are
    2**31 rows or more.

    Returns:
      Whether the features are resident.
    """
    if self.backend != "vmap":
      return False
    features = dict(features)
    key = feature_identity(features)
    if key in self._runner.resident:
      return True
    rows = {len(x) for x in features.values()}
    nbytes = sum(int(np.prod(x.shape)) * np.dtype(x.dtype).itemsize for x in features.values())
    copies = len(self.mesh.local_devices) if jax.default_backend() == "cpu" else 1
    budget = self.memory_budget_bytes or default_memory_budget()
    if len(rows) != 1 or max(rows) >= 2**31 or nbytes * copies > RESIDENT_FRACTION * budget:
      log.info("training features (%d bytes x %d copies) stay on the host", nbytes, copies)
      return False
    sharding = NamedSharding(self.mesh, P())
    arrays = {k: put_host(np.asarray(x), sharding) for k, x in features.items()}
    self._runner.resident[key] = Resident(arrays, features)
    return True

  def _auto_resident(self, cohort: Cohort) -> None:
    """Makes a dataset's memory-mapped features (``gather_cohort`` passes them through) resident
    the first time a cohort reads them, in a single-process run: the same arrays come back
    every round. (Multi-process runs call ``make_resident`` themselves, every process alike.)"""
    for part in cohort.parts:
      features = part.features
      key = feature_identity(features)
      if jax.process_count() > 1 or key in self._runner.resident or key in self._declined:
        continue
      if features and all(isinstance(x, np.memmap) for x in features.values()) and not self.make_resident(features):
        self._declined[key] = features  # kept alive, so its identity is not reused

  def place_replicated(self, tree: PyTree) -> PyTree:
    """Puts ``tree`` on every device of the mesh (a no-op for the per-client backends)."""
    return tree if self.mesh is None else place_replicated(tree, self.mesh)

  def run(
    self, program: ClientProgram, shared: PyTree, cohort: Cohort, rng: PRNGKey
  ) -> tuple[Aggregate, Mapping[str, np.ndarray]]:
    """Runs every client's local work and reduces the weighted updates.

    Args:
      program: the clients' local work; pure and jittable. Keep the same object across rounds:
        compiled programs are cached on it.
      shared: what every client receives (e.g. the global parameters); replicated.
      cohort: the round's cohort.
      rng: the round's key.

    Returns:
      ``(aggregate, per_client)``: the weighted sums on device, and per-client metrics as NumPy
      arrays in cohort order, plus ``'nonfinite'`` (bool) for clients left out: a ``Deferred``
      mapping, fetched from the devices when first read (so this returns while the round runs).
    """
    if cohort.num_clients == 0:
      raise ValueError("the cohort has no clients")
    if self.backend == "vmap":
      self._auto_resident(cohort)
      shared, rng = replicated_arguments((shared, rng), self.mesh)
    aggregate, results = self._runner.run(program, shared, cohort, rng)
    self.stats.real_example_steps += cohort.real_example_steps
    # Fetched when first read: the round may still be running when this returns.
    return aggregate, Deferred(lambda: per_client(cohort, jax.device_get(results)))

  def run_rounds(self, program: ClientProgram, shared_of, server_update, state, cohorts, rngs):
    """Runs ``len(cohorts)`` rounds, each followed by ``server_update``, as one compiled program
    (``engine/rounds.py``); None where that does not apply (the per-client backends, cohorts of
    different shapes or of several chunks, multi-process runs): run them one at a time then.

    Returns:
      ``(state, aggregates, per_clients, computed)``: the state after the last round, every
      round's ``Aggregate`` stacked on a leading round axis (on device), per round a ``Deferred``
      per-client mapping as ``run``'s (all rounds fetched together when one is first read) and
      the example slots computed (padding included); or None.
    """
    if self.backend != "vmap" or not cohorts:
      return None
    for cohort in cohorts:
      self._auto_resident(cohort)
    result = self._runner.run_rounds(program, shared_of, server_update, state, cohorts, rngs)
    if result is None:
      return None
    self.stats.real_example_steps += sum(c.real_example_steps for c in cohorts)
    fetched = Deferred(lambda: {"all": jax.device_get((result.metrics, result.nonfinite))})

    def per_round(r, cohort, lanes):
      def compute():
        metrics, nonfinite = fetched["all"]
        return per_client(cohort, [(lanes, {k: v[r] for k, v in metrics.items()}, nonfinite[r])])

      return Deferred(compute)

    per_clients = [per_round(r, c, x) for r, (c, x) in enumerate(zip(cohorts, result.lanes))]
    return result.state, result.aggregates, per_clients, [x.mask.size for x in result.lanes]
