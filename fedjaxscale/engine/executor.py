"""The cohort executor: one compiled program maps a client update over a whole cohort.

``Engine.run(program, shared, cohort, rng)`` computes, for the real clients k of the cohort,

    update_sum = sum_k w_k * u_k,    weight_sum = sum_k w_k

where ``(u_k, w_k, metrics_k)`` is client k's ``ClientOutput`` after its local steps, with
``w_k`` the client's weight times the cohort's per-client multiplier. A client whose update or
weight is not finite is left out of both sums (and counted), so one diverged client cannot
poison the round. Only these sums (one model-sized tree) and per-client scalars leave the
devices.

A client's local work is a ``ClientProgram``: ``init`` (its starting state), ``step`` (one
local step on one batch) and ``finish`` (its update, weight and metrics). Client k gets the key
``fold_in(rng, k)`` and its local step s the key ``fold_in(fold_in(rng, k), s)``, so results do
not depend on padding, packing, chunking or the backend.

Backends:
  * ``vmap`` (default): lanes (see ``core.cohort``) are ``vmap``ped inside ``jax.shard_map`` over
    a 1-D ``clients`` mesh of every device; each device reduces its own lanes and a ``psum``
    joins them. A lane holding one client runs ``init``, a ``scan`` of ``step`` and ``finish``;
    a lane of packed clients restarts ``init`` where a client starts and adds the weighted
    update where one ends. Parts larger than the memory budget run as chunks of one shape,
    added into a donated on-device accumulator.
  * ``loop``: one jitted client at a time (the baseline the benchmarks compare with, and a
    debugging aid whose numbers must equal ``vmap``'s).
  * ``debug``: no ``jit`` at all; an exception names the client that raised it.
"""

import dataclasses
import functools
import os
import threading
from collections.abc import Callable, Mapping
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

from fedjaxscale.core.buckets import bucket_size
from fedjaxscale.core.cohort import IDLE, Cohort, CohortPart, chunk_sizes
from fedjaxscale.core.tree import tree_all_finite, tree_where
from fedjaxscale.core.types import PRNGKey, PyTree

CLIENTS = "clients"
BACKENDS = ("vmap", "loop", "debug")
CPU_LANES_PER_DEVICE = 1024  # default chunk cap on CPU (see Engine)
CPU_UNROLL_STEPS = 8  # default: fully unroll local-step scans up to this long on CPU (see Engine)


class ClientOutput(NamedTuple):
  """What a client's local work produces.

  Attributes:
    update: the pytree to aggregate (e.g. the model delta).
    weight: float32 scalar aggregation weight (e.g. ``num_examples``, or 1 for uniform).
    metrics: name -> float32 scalar, returned to the host per client (e.g. training loss).
  """

  update: PyTree
  weight: jax.Array
  metrics: Mapping[str, jax.Array]


class ClientProgram(NamedTuple):
  """A client's local work as three pure, jittable functions.

  Attributes:
    init: ``(shared, rng) -> carry``; the client's state before its first step.
    step: ``(shared, carry, batch, mask, rng) -> carry``; one local step on one batch
      (``batch`` has a leading example axis, ``mask`` marks real examples; a step whose mask is
      all False must leave the carry as it was).
    finish: ``(shared, carry, num_examples) -> ClientOutput``.
  """

  init: Callable[[Any, PRNGKey], PyTree]
  step: Callable[[Any, PyTree, Mapping[str, jax.Array], jax.Array, PRNGKey], PyTree]
  finish: Callable[[Any, PyTree, jax.Array], ClientOutput]


class Aggregate(NamedTuple):
  """Weighted sums over the cohort's finite clients (device arrays)."""

  update_sum: PyTree
  weight_sum: jax.Array
  num_nonfinite: jax.Array


class ClientError(RuntimeError):
  """Raised by the ``debug`` backend: names the client whose update failed."""


def run_client(program: ClientProgram, shared, batch, mask, num_examples, rng, unroll: int | bool = 1) -> ClientOutput:
  """One client's whole local work: ``init``, a ``scan`` of ``step`` over its steps, ``finish``."""

  def body(carry, xs):
    b, m, s = xs
    return program.step(shared, carry, b, m, jax.random.fold_in(rng, s)), None

  steps = jnp.arange(mask.shape[0], dtype=jnp.int32)
  carry, _ = jax.lax.scan(body, program.init(shared, rng), (batch, mask, steps), unroll=unroll)
  return program.finish(shared, carry, num_examples)


def _weigh(out: ClientOutput, multiplier, real):
  """One client's contribution: (w * u, w, nonfinite) with non-finite clients zeroed."""
  w = out.weight.astype(jnp.float32) * multiplier
  finite = tree_all_finite(out.update) & jnp.isfinite(w)
  w = jnp.where(finite, w, 0.0)
  weighted = jax.tree.map(lambda u: jnp.where(finite, u * w.astype(u.dtype), jnp.zeros_like(u)), out.update)
  return weighted, w, real & ~finite


def _accumulate(acc: Aggregate, contrib: Aggregate) -> Aggregate:
  return jax.tree.map(jnp.add, acc, contrib)


def _client_key(rng, owner):
  return jax.random.fold_in(rng, jnp.maximum(owner, 0))


def default_mesh() -> jax.sharding.Mesh:
  """A 1-D ``clients`` mesh over every (global) device."""
  return jax.make_mesh((jax.device_count(),), (CLIENTS,), axis_types=(jax.sharding.AxisType.Explicit,))


def _default_memory_budget() -> int:
  """Half the accelerator's memory, or a quarter of host RAM on CPU."""
  stats = jax.local_devices()[0].memory_stats() or {}
  if "bytes_limit" in stats:
    return int(stats["bytes_limit"] * 0.5)
  return int(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") * 0.25)


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


class _HostLanes(NamedTuple):
  """A chunk's per-lane (one client per lane) or per-step (packed lanes) host arrays.

  ``rows`` indexes the cohort's features; the examples themselves are read per device when the
  chunk is placed (``put_rows``).
  """

  rows: np.ndarray
  mask: np.ndarray
  owner: np.ndarray
  start: np.ndarray | None
  end: np.ndarray | None
  local_step: np.ndarray | None
  num_examples: np.ndarray
  weight: np.ndarray


def _host_lanes(part: CohortPart, cohort: Cohort) -> _HostLanes:
  packed = part.packed
  owner = part.owner if packed else part.owner[:, 0]
  real = owner != IDLE
  safe = np.where(real, owner, 0)
  num_examples = np.where(real, cohort.num_examples[safe], 0).astype(np.float32)
  weight = np.where(real, cohort.weights[safe], 0).astype(np.float32)
  start = end = local_step = None
  if packed:
    start, end, local_step = part.boundaries()
  return _HostLanes(part.rows, part.mask, owner.astype(np.int32), start, end, local_step, num_examples, weight)


def put_host(x: np.ndarray, sharding: jax.sharding.Sharding) -> jax.Array:
  """Places a host array that every process holds whole; each process copies its own shards.

  This and ``put_rows`` are the engine's deliberate transfers, so they are allowed under a
  ``jax.transfer_guard('disallow')`` that catches implicit ones elsewhere.
  """
  x = np.asarray(x)
  with jax.transfer_guard_host_to_device("allow"):
    if jax.process_count() == 1:  # one batched transfer beats a callback per device
      return jax.device_put(x, sharding)
    return jax.make_array_from_callback(x.shape, sharding, lambda index: x[index])


def place_replicated(tree: PyTree, mesh: jax.sharding.Mesh) -> PyTree:
  """Puts ``tree`` on every device of ``mesh``.

  Leaves already replicated over the mesh stay where they are; others go through the host, so
  this works in multi-process runs too (every process must pass the same values).
  """
  sharding = NamedSharding(mesh, P())

  def place(x):
    if isinstance(x, jax.Array) and x.sharding.is_equivalent_to(sharding, x.ndim):
      return x
    if isinstance(x, jax.Array) and jnp.issubdtype(x.dtype, jax.dtypes.prng_key):
      data = put_host(np.asarray(jax.random.key_data(x)), sharding)
      return jax.random.wrap_key_data(data, impl=jax.random.key_impl(x))
    return put_host(np.asarray(x), sharding)

  return jax.tree.map(place, tree)


def put_rows(features: Mapping[str, np.ndarray], rows: np.ndarray, sharding: jax.sharding.Sharding) -> dict:
  """Places ``features[rows]`` sharded over the leading axis, reading only this process's rows."""

  def put(x):
    def shard(index):
      r = rows[index[0]]
      return np.asarray(x[r.reshape(-1)]).reshape(r.shape + x.shape[1:])

    return jax.make_array_from_callback(rows.shape + x.shape[1:], sharding, shard)

  with jax.transfer_guard_host_to_device("allow"):
    if jax.process_count() == 1:
      flat = rows.reshape(-1)
      return {
        name: jax.device_put(np.asarray(x[flat]).reshape(rows.shape + x.shape[1:]), sharding)
        for name, x in features.items()
      }
    return {name: put(x) for name, x in features.items()}


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
    scan_unroll: ``unroll`` of the local-step ``lax.scan`` of lanes that hold one client each.
      Default: on CPU, unroll scans of up to 8 steps fully (XLA:CPU runs convolutions inside a
      loop body several times slower than unrolled: jax-ml/jax#12868), else 1.

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
  ):
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
    self._programs: dict[Any, Any] = {}
    self._chunk_limits: dict[Any, int | None] = {}
    self._lock = threading.Lock()
    self.lane_shapes: set[tuple[int, int]] = set()  # (lanes, steps) of the chunks compiled so far

  @property
  def client_multiple(self) -> int:
    """Each part's lane count is padded to a multiple of this (the mesh's ``clients`` size)."""
    return int(self.mesh.shape[CLIENTS]) if self.backend == "vmap" else 1

  def place_replicated(self, tree: PyTree) -> PyTree:
    """Puts ``tree`` on every device of the mesh (a no-op for the per-client backends)."""
    return tree if self.mesh is None else place_replicated(tree, self.mesh)

  def run(
    self, program: ClientProgram, shared: PyTree, cohort: Cohort, rng: PRNGKey
  ) -> tuple[Aggregate, dict[str, np.ndarray]]:
    """Runs every client's local work and reduces the weighted updates.

    Args:
      program: the clients' local work; pure and jittable. Keep the same object across rounds:
        compiled programs are cached on it.
      shared: what every client receives (e.g. the global parameters); replicated.
      cohort: the round's cohort.
      rng: the round's key.

    Returns:
      ``(aggregate, per_client)``: the weighted sums on device, and per-client metrics as NumPy
      arrays in cohort order, plus ``'nonfinite'`` (bool) for clients left out.
    """
    if cohort.num_clients == 0:
      raise ValueError("the cohort has no clients")
    runner = {"vmap": self._run_vmap, "loop": self._run_loop, "debug": self._run_debug}[self.backend]
    aggregate, results = runner(program, shared, cohort, rng)
    self.stats.real_example_steps += cohort.real_example_steps
    return aggregate, _per_client(cohort, results)

  # -- vmap over a mesh -----------------------------------------------------------------------

  def _run_vmap(self, program, shared, cohort, rng):
    shared, rng = self.place_replicated((shared, rng))
    acc, results = None, []
    for part in cohort.parts:
      lanes = _host_lanes(part, cohort)
      features = part.features
      limit = self._chunk_limit(program, shared, lanes, features, rng)
      start = 0
      for size in chunk_sizes(part.num_lanes, self.client_multiple, limit):
        chunk = _pad_lanes(_slice_lanes(lanes, start, min(start + size, part.num_lanes)), size)
        start += size
        compiled, zeros = self._program(program, shared, chunk, features, rng)
        acc, metrics, nonfinite = compiled(
          zeros() if acc is None else acc, shared, self._put_sharded(chunk, features), rng
        )
        results.append((chunk, metrics, nonfinite))
        self.stats.chunks += 1
        self.stats.computed_example_steps += chunk.mask.size
    host = jax.device_get([(m, nf) for _, m, nf in results])
    return acc, [(chunk, m, nf) for (chunk, _, _), (m, nf) in zip(results, host)]

  def _put_sharded(self, lanes: _HostLanes, features, abstract: bool = False):
    """The chunk's device inputs (or their shapes, to compile): each process reads its own lanes."""
    sharding = NamedSharding(self.mesh, P(CLIENTS))
    small = tuple(x for x in lanes[1:] if x is not None)
    if abstract:
      batch = {
        k: jax.ShapeDtypeStruct(lanes.rows.shape + x.shape[1:], x.dtype, sharding=sharding) for k, x in features.items()
      }
      return (batch,) + tuple(jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=sharding) for x in small)
    return (put_rows(features, lanes.rows, sharding),) + tuple(put_host(x, sharding) for x in small)

  def _signature(self, program, shared, lanes: _HostLanes, features, rng):
    abstract = tuple((tuple(x.shape), str(x.dtype)) for x in jax.tree.leaves((shared, rng, tuple(lanes))))
    specs = tuple((k, x.shape[1:], str(x.dtype)) for k, x in sorted(features.items()))
    return (program, jax.tree.structure((shared, tuple(lanes))), abstract, specs)

  def _program(self, program, shared, lanes: _HostLanes, features, rng):
    key = self._signature(program, shared, lanes, features, rng)
    with self._lock:
      if key not in self._programs:
        self._programs[key] = self._compile(program, shared, lanes, features, rng)
      return self._programs[key]

  def _compile(self, program, shared, lanes: _HostLanes, features, rng):
    mesh = self.mesh
    packed = lanes.start is not None

    def one_client_lanes(shared, data, rng):
      batch, mask, owner, num_examples, weight = data
      keys = jax.vmap(_client_key, in_axes=(None, 0))(rng, owner)
      out = jax.vmap(
        functools.partial(run_client, program, unroll=self._unroll(mask.shape[1])), in_axes=(None, 0, 0, 0, 0)
      )(shared, batch, mask, num_examples, keys)
      weighted, w, nonfinite = jax.vmap(_weigh)(out, weight, owner != IDLE)
      return Aggregate(weighted, w, nonfinite.astype(jnp.int32)), out.metrics, nonfinite

    def packed_lanes(shared, data, rng):
      def lane(batch, mask, owner, start, end, local_step, num_examples, weight):
        carry = program.init(shared, rng)
        zero = jax.tree.map(jnp.zeros_like, program.finish(shared, carry, jnp.zeros((), jnp.float32)).update)
        acc = Aggregate(zero, jnp.zeros((), jnp.float32), jnp.zeros((), jnp.int32))

        def body(state, xs):
          carry, acc = state
          b, m, o, st, en, ls, n, wm = xs
          key = _client_key(rng, o)
          carry = tree_where(st, program.init(shared, key), carry)
          carry = program.step(shared, carry, b, m, jax.random.fold_in(key, ls))
          out = program.finish(shared, carry, n)
          weighted, w, nonfinite = _weigh(out, wm * en, (o != IDLE) & en)
          acc = _accumulate(acc, Aggregate(weighted, w, nonfinite.astype(jnp.int32)))
          return (carry, acc), (out.metrics, nonfinite)

        (_, acc), (metrics, nonfinite) = jax.lax.scan(
          body, (carry, acc), (batch, mask, owner, start, end, local_step, num_examples, weight)
        )
        return acc, metrics, nonfinite

      return jax.vmap(lane)(*data)

    def per_shard(shared, data, rng):
      acc, metrics, nonfinite = (packed_lanes if packed else one_client_lanes)(shared, data, rng)
      local = jax.tree.map(lambda x: x.sum(0), acc)
      # Per-client scalars are tiny: gather them to every device (and so every process: the
      # selection policy runs on each host with the same inputs).
      gathered = jax.lax.all_gather((metrics, nonfinite), CLIENTS, tiled=True)
      return jax.lax.psum(local, CLIENTS), *gathered

    # check_vma=False: client programs create constants (zeros for their running sums) that the
    # varying-axes checker would ask every algorithm author to pcast; the collectives here are a
    # psum of genuinely per-device partial sums and an all_gather, which need no such typing.
    sharded = jax.shard_map(
      per_shard, mesh=mesh, in_specs=(P(), P(CLIENTS), P()), out_specs=(P(), P(), P()), check_vma=False
    )

    def step(acc, shared, data, rng):
      total, metrics, nonfinite = sharded(shared, data, rng)
      return _accumulate(acc, total), metrics, nonfinite

    data = self._put_sharded(lanes, features, abstract=True)
    replicated = NamedSharding(mesh, P())
    acc = jax.eval_shape(lambda: _zero_aggregate(program, shared, rng))
    acc = jax.tree.map(lambda s: jax.ShapeDtypeStruct(s.shape, s.dtype, sharding=replicated), acc)
    compiled = jax.jit(step, donate_argnums=(0,)).lower(acc, shared, data, rng).compile()
    # The accumulator's zeros are made on the devices by a program of their own: no per-round
    # tracing, no host-to-device transfer.
    zeros = jax.jit(lambda: jax.tree.map(jnp.zeros_like, acc), out_shardings=replicated).lower().compile()
    self.stats.compiles += 1
    self.lane_shapes.add(tuple(lanes.mask.shape[:2]))
    return compiled, zeros

  def _unroll(self, steps: int) -> int | bool:
    if self.scan_unroll is not None:
      return self.scan_unroll
    return True if jax.default_backend() == "cpu" and steps <= CPU_UNROLL_STEPS else 1

  def _chunk_limit(self, program, shared, lanes: _HostLanes, features, rng) -> int | None:
    """Lanes per chunk: the user's bound, else what fits the memory budget (and the CPU cap)."""
    if self.max_clients_per_chunk is not None:
      return self.max_clients_per_chunk
    cap = CPU_LANES_PER_DEVICE * self.client_multiple if jax.default_backend() == "cpu" else None
    limit = self._memory_limit(program, shared, lanes, features, rng, cap)
    return cap if limit is None else limit

  def _memory_limit(self, program, shared, lanes: _HostLanes, features, rng, cap: int | None) -> int | None:
    """The lanes that fit the memory budget, from XLA's analysis of a probe chunk (None: all)."""
    num_lanes = lanes.mask.shape[0]
    probe_size = chunk_sizes(num_lanes, self.client_multiple, cap)[0]
    probe = _pad_lanes(_slice_lanes(lanes, 0, min(num_lanes, probe_size)), probe_size)
    key = self._signature(program, shared, probe, features, rng)
    if key in self._chunk_limits:
      return self._chunk_limits[key]
    budget = self.memory_budget_bytes or _default_memory_budget()
    compiled, _ = self._program(program, shared, probe, features, rng)
    stats = compiled.memory_analysis()
    used = 0
    if stats is not None:
      used = stats.temp_size_in_bytes + stats.argument_size_in_bytes + stats.output_size_in_bytes
    limit = None
    if used > budget:
      per_lane = max(1, used // probe_size)
      limit = max(self.client_multiple, budget // per_lane)
    self._chunk_limits[key] = limit
    return limit

  # -- one client at a time ---------------------------------------------------------------------

  def _run_loop(self, program, shared, cohort, rng):
    key = ("loop", program)
    with self._lock:
      if key not in self._programs:
        self._programs[key] = (
          jax.jit(functools.partial(_contribution, program)),
          jax.jit(_accumulate, donate_argnums=(0,)),
        )
      contribution, accumulate = self._programs[key]
    return self._per_client_run(contribution, accumulate, shared, cohort, rng, tag_errors=False)

  def _run_debug(self, program, shared, cohort, rng):
    with jax.disable_jit():
      return self._per_client_run(
        functools.partial(_contribution, program), _accumulate, shared, cohort, rng, tag_errors=True
      )

  def _per_client_run(self, contribution, accumulate, shared, cohort, rng, tag_errors):
    """Each client's steps, cut out of its lane and padded to the lane length (one shape a part)."""
    acc, results = None, []
    for part in cohort.parts:
      start, end, _ = part.boundaries()
      real = part.owner != IDLE
      first_lane, first_step = np.nonzero(start & real)
      stop_step = np.nonzero(end & real)[1] + 1  # same (lane, step) order as the starts
      metrics, nonfinite, owners = [], [], []
      for lane, first, stop in zip(first_lane, first_step, stop_step):
        k = int(part.owner[lane, first])
        # Pad to the client's own step bucket (not the lane length): a few shapes, little waste.
        steps = bucket_size(int(stop - first))
        batch = {name: _pad_steps(v[0, first:stop], steps) for name, v in part.gather([lane]).items()}
        mask = _pad_steps(part.mask[lane, first:stop], steps)
        try:
          weighted, w, nf, m = contribution(
            shared, batch, mask, cohort.num_examples[k], cohort.weights[k], _client_key(rng, k)
          )
        except Exception as e:  # Tag the failure with the client; keep the original as the cause.
          if not tag_errors:
            raise
          raise ClientError(
            f"client {str(cohort.client_ids[k])!r} (cohort position {k}) failed: {type(e).__name__}: {e}"
          ) from e
        contrib = Aggregate(weighted, w, nf.astype(jnp.int32))
        acc = contrib if acc is None else accumulate(acc, contrib)
        metrics.append(m)
        nonfinite.append(nf)
        owners.append(k)
        self.stats.computed_example_steps += steps * part.batch_size
      if owners:
        metrics, nonfinite = jax.device_get((metrics, nonfinite))
        results.append(
          (np.array(owners), {name: np.array([m[name] for m in metrics]) for name in metrics[0]}, np.array(nonfinite))
        )
    return acc, results


def _contribution(program, shared, batch, mask, num_examples, multiplier, key):
  """One client's local work, weighted: ``(w * u, w, nonfinite, metrics)``."""
  out = run_client(program, shared, batch, mask, num_examples, key)
  weighted, w, nonfinite = _weigh(out, multiplier, True)
  return weighted, w, nonfinite, out.metrics


def _pad_steps(x: np.ndarray, steps: int) -> np.ndarray:
  return np.pad(x, [(0, steps - x.shape[0])] + [(0, 0)] * (x.ndim - 1))


def _slice_lanes(lanes: _HostLanes, start: int, stop: int) -> _HostLanes:
  return _HostLanes(*(None if x is None else x[start:stop] for x in lanes))


def _pad_lanes(lanes: _HostLanes, size: int) -> _HostLanes:
  extra = size - lanes.mask.shape[0]
  if extra == 0:
    return lanes

  def pad(x, value=0):
    return np.pad(x, [(0, extra)] + [(0, 0)] * (x.ndim - 1), constant_values=value)

  return _HostLanes(
    pad(lanes.rows, lanes.rows.flat[0]),
    pad(lanes.mask, False),
    pad(lanes.owner, IDLE),
    None if lanes.start is None else pad(lanes.start, True),
    None if lanes.end is None else pad(lanes.end, True),
    None if lanes.local_step is None else pad(lanes.local_step),
    pad(lanes.num_examples),
    pad(lanes.weight),
  )


def _zero_aggregate(program, shared, rng) -> Aggregate:
  """Zeros shaped like the clients' update (traces ``program`` once, abstractly)."""
  carry = program.init(shared, rng)
  out = program.finish(shared, carry, jnp.zeros((), jnp.float32))
  return Aggregate(jax.tree.map(jnp.zeros_like, out.update), jnp.zeros((), jnp.float32), jnp.zeros((), jnp.int32))


def _per_client(cohort: Cohort, results) -> dict[str, np.ndarray]:
  """Puts per-lane (or per-step) outputs back in cohort order, dropping padding and idle steps."""
  out: dict[str, np.ndarray] = {}
  nonfinite = np.zeros(cohort.num_clients, bool)

  def put(positions, metrics, nf):
    for k, v in metrics.items():
      if k not in out:
        out[k] = np.zeros((cohort.num_clients,) + v.shape[1:], v.dtype)
      out[k][positions] = v
    nonfinite[positions] = nf

  for item in results:
    if isinstance(item[0], _HostLanes):
      lanes, metrics, nf = item
      if lanes.start is None:  # one client per lane
        real = lanes.owner != IDLE
        put(lanes.owner[real], {k: v[real] for k, v in metrics.items()}, nf[real])
      else:  # packed: a client's metrics are those of its last step
        last = lanes.end & (lanes.owner != IDLE)
        put(lanes.owner[last], {k: v[last] for k, v in metrics.items()}, nf[last])
    else:
      put(*item)
  out["nonfinite"] = nonfinite
  return out
