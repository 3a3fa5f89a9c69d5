"""The cohort executor: one compiled program maps a client update over a whole cohort.

``Engine.run(client_fn, shared, cohort, rng)`` computes, for the real clients k of the cohort,

    update_sum = sum_k w_k * u_k,    weight_sum = sum_k w_k

where ``(u_k, w_k, metrics_k) = client_fn(shared, client_k, fold_in(rng, position_k))`` and w_k
is the client's weight times the cohort's per-client multiplier. A client whose update or weight
is not finite is left out of both sums (and counted), so one diverged client cannot poison the
round. Only these sums (one model-sized tree) and per-client scalars leave the devices.

Backends:
  * ``vmap`` (default): clients are ``vmap``ped inside ``jax.shard_map`` over a 1-D ``clients``
    mesh of every device; each device reduces its own clients and a ``psum`` joins them. Parts
    larger than the memory budget run as chunks of one shape, added into a donated on-device
    accumulator.
  * ``loop``: one jitted client at a time (the baseline the benchmarks compare with, and a
    debugging aid whose numbers must equal ``vmap``'s).
  * ``debug``: no ``jit`` at all; an exception names the client that raised it.
"""

import dataclasses
import os
import threading
from typing import Any, Callable, Mapping, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import NamedSharding, PartitionSpec as P

from fedjaxscale.core.cohort import Cohort, CohortPart, chunk_sizes
from fedjaxscale.core.tree import tree_all_finite, tree_size_bytes
from fedjaxscale.core.types import PRNGKey, PyTree

CLIENTS = "clients"
BACKENDS = ("vmap", "loop", "debug")


class ClientInput(NamedTuple):
  """One client's local-training input, as ``client_fn`` sees it.

  Attributes:
    batch: feature name -> ``[steps, batch, ...]``.
    mask: bool ``[steps, batch]``, True on real examples.
    num_examples: float32 scalar, the client's training-set size (0 for a padding client).
  """

  batch: Mapping[str, jax.Array]
  mask: jax.Array
  num_examples: jax.Array


class ClientOutput(NamedTuple):
  """What ``client_fn`` returns.

  Attributes:
    update: the pytree to aggregate (e.g. the model delta).
    weight: float32 scalar aggregation weight (e.g. ``num_examples``, or 1 for uniform).
    metrics: name -> float32 scalar, returned to the host per client (e.g. training loss).
  """

  update: PyTree
  weight: jax.Array
  metrics: Mapping[str, jax.Array]


class Aggregate(NamedTuple):
  """Weighted sums over the cohort's finite clients (device arrays)."""

  update_sum: PyTree
  weight_sum: jax.Array
  num_nonfinite: jax.Array


ClientFn = Callable[[Any, ClientInput, PRNGKey], ClientOutput]


class ClientError(RuntimeError):
  """Raised by the ``debug`` backend: names the client whose update failed."""


def _weigh(out: ClientOutput, multiplier, real):
  """One client's contribution: (w * u, w, nonfinite) with non-finite clients zeroed."""
  w = out.weight.astype(jnp.float32) * multiplier
  finite = tree_all_finite(out.update) & jnp.isfinite(w)
  w = jnp.where(finite, w, 0.0)
  weighted = jax.tree.map(lambda u: jnp.where(finite, u * w.astype(u.dtype), jnp.zeros_like(u)), out.update)
  return weighted, w, real & ~finite


def _client_keys(rng, position):
  return jax.vmap(lambda p: jax.random.fold_in(rng, p))(jnp.maximum(position, 0))


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


class Engine:
  """Runs a per-client function over a cohort and reduces it on the devices.

  Args:
    backend: ``'vmap'`` (default), ``'loop'`` or ``'debug'``.
    mesh: a mesh with a ``clients`` axis; default: every device.
    max_clients_per_chunk: the most clients one compiled call trains. Default: as many as fit
      ``memory_budget_bytes``, found from XLA's memory analysis of the compiled program.
    memory_budget_bytes: default: half the accelerator's memory (a quarter of RAM on CPU).

  Example::

    engine = Engine()
    aggregate, per_client = engine.run(client_fn, params, cohort, jax.random.key(0))
  """

  def __init__(self, backend: str = "vmap", mesh: jax.sharding.Mesh | None = None,
               max_clients_per_chunk: int | None = None, memory_budget_bytes: int | None = None):
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
    self.stats = EngineStats()
    self._programs: dict[Any, Any] = {}
    self._chunk_limits: dict[Any, int] = {}
    self._lock = threading.Lock()

  @property
  def client_multiple(self) -> int:
    """Each part's client axis is padded to a multiple of this (the mesh's ``clients`` size)."""
    return int(self.mesh.shape[CLIENTS]) if self.backend == "vmap" else 1

  # -- public ---------------------------------------------------------------------------------

  def run(self, client_fn: ClientFn, shared: PyTree, cohort: Cohort, rng: PRNGKey) -> tuple[Aggregate, dict[str, np.ndarray]]:
    """Maps ``client_fn`` over the cohort and reduces it.

    Args:
      client_fn: ``(shared, ClientInput, rng) -> ClientOutput``; pure and jittable. Keep the same
        function object across rounds: compiled programs are cached on it.
      shared: what every client receives (e.g. the global parameters); replicated.
      cohort: the round's cohort.
      rng: the round's key; client k gets ``fold_in(rng, position_k)``.

    Returns:
      ``(aggregate, per_client)``: the weighted sums on device, and per-client metrics as NumPy
      arrays in cohort order, plus ``'nonfinite'`` (bool) for clients left out.
    """
    if cohort.num_clients == 0:
      raise ValueError("the cohort has no clients")
    runner = {"vmap": self._run_vmap, "loop": self._run_loop, "debug": self._run_debug}[self.backend]
    aggregate, per_part = runner(client_fn, shared, cohort, rng)
    return aggregate, _gather_per_client(cohort, per_part)

  # -- vmap over a mesh -----------------------------------------------------------------------

  def _run_vmap(self, client_fn, shared, cohort, rng):
    replicated = NamedSharding(self.mesh, P())
    shared = jax.device_put(shared, replicated)
    rng = jax.device_put(rng, replicated)
    acc = None
    per_part = []
    for part in cohort.parts:
      limit = self._chunk_limit(client_fn, shared, part, rng)
      metrics, nonfinite, start = [], [], 0
      for size in chunk_sizes(part.num_clients, self.client_multiple, limit):
        chunk = part.slice_clients(start, start + size).pad_clients(size)
        start += size
        if acc is None:
          acc = self._zero_aggregate(client_fn, shared, chunk, rng)
        program = self._program(client_fn, shared, chunk, rng)
        acc, m, nf = program(acc, shared, self._put_sharded(chunk), rng)
        metrics.append(m)
        nonfinite.append(nf)
        self.stats.chunks += 1
        self.stats.computed_example_steps += chunk.mask.size
      self.stats.real_example_steps += int(part.mask.sum())
      metrics, nonfinite = jax.device_get((metrics, nonfinite))
      per_part.append((part, {k: np.concatenate([m[k] for m in metrics])[:part.num_clients] for k in metrics[0]},
                       np.concatenate(nonfinite)[:part.num_clients]))
    return acc, per_part

  def _put_sharded(self, part: CohortPart):
    sharding = NamedSharding(self.mesh, P(CLIENTS))
    return jax.device_put((dict(part.batch), part.mask, part.num_examples, part.weight, part.position), sharding)

  def _signature(self, client_fn, shared, part, rng):
    def abstract(tree):
      return tuple((tuple(x.shape), str(x.dtype)) for x in jax.tree.leaves(tree))
    batch_sig = tuple((k, tuple(v.shape), str(v.dtype)) for k, v in sorted(part.batch.items()))
    return (client_fn, jax.tree.structure(shared), abstract(shared), batch_sig, part.mask.shape,
            str(jax.random.key_data(rng).dtype) if jnp.issubdtype(rng.dtype, jax.dtypes.prng_key) else str(rng.dtype))

  def _program(self, client_fn, shared, chunk: CohortPart, rng):
    key = self._signature(client_fn, shared, chunk, rng)
    with self._lock:
      if key not in self._programs:
        self._programs[key] = self._compile(client_fn, shared, chunk, rng)
      return self._programs[key]

  def _compile(self, client_fn, shared, chunk, rng):
    mesh = self.mesh

    def per_shard(shared, data, rng):
      batch, mask, num_examples, weight, position = data
      # Each client starts from its own copy of the broadcast: mark it varying over the mesh so
      # a client's scan carry (params that start shared and become per-client) type-checks.
      shared = jax.tree.map(lambda x: jax.lax.pcast(x, (CLIENTS,), to="varying"), shared)
      keys = _client_keys(rng, position)
      out = jax.vmap(client_fn, in_axes=(None, 0, 0))(shared, ClientInput(batch, mask, num_examples), keys)
      weighted, w, nonfinite = jax.vmap(_weigh)(out, weight, position >= 0)
      local = Aggregate(jax.tree.map(lambda x: x.sum(0), weighted), w.sum(), nonfinite.sum().astype(jnp.int32))
      return jax.lax.psum(local, CLIENTS), out.metrics, nonfinite

    sharded = jax.shard_map(per_shard, mesh=mesh, in_specs=(P(), P(CLIENTS), P()),
                            out_specs=(P(), P(CLIENTS), P(CLIENTS)))

    def step(acc, shared, data, rng):
      total, metrics, nonfinite = sharded(shared, data, rng)
      return jax.tree.map(jnp.add, acc, total), metrics, nonfinite

    data = self._put_sharded(chunk)
    acc = jax.eval_shape(lambda: self._zero_aggregate_abstract(client_fn, shared, chunk, rng))
    acc = jax.tree.map(lambda s: jax.ShapeDtypeStruct(s.shape, s.dtype, sharding=NamedSharding(mesh, P())), acc)
    compiled = jax.jit(step, donate_argnums=(0,)).lower(acc, shared, data, rng).compile()
    self.stats.compiles += 1
    return compiled

  def _chunk_limit(self, client_fn, shared, part: CohortPart, rng) -> int | None:
    """Clients per chunk: the user's bound, else what fits the memory budget."""
    if self.max_clients_per_chunk is not None:
      return self.max_clients_per_chunk
    probe_size = chunk_sizes(part.num_clients, self.client_multiple)[0]
    probe = part.slice_clients(0, min(part.num_clients, probe_size)).pad_clients(probe_size)
    key = self._signature(client_fn, shared, probe, rng)[:-2] + (part.mask.shape[1:],)
    if key in self._chunk_limits:
      return self._chunk_limits[key]
    budget = self.memory_budget_bytes or _default_memory_budget()
    program = self._program(client_fn, shared, probe, rng)
    stats = program.memory_analysis()
    used = 0
    if stats is not None:
      used = stats.temp_size_in_bytes + stats.argument_size_in_bytes + stats.output_size_in_bytes
    limit = None
    if used > budget:
      per_client = max(1, used // probe_size)
      limit = max(self.client_multiple, budget // per_client)
    self._chunk_limits[key] = limit
    return limit

  def _zero_aggregate_abstract(self, client_fn, shared, chunk, rng):
    one = ClientInput({k: v[0] for k, v in chunk.batch.items()}, chunk.mask[0], chunk.num_examples[0])
    out = jax.eval_shape(client_fn, shared, one, rng)
    return Aggregate(jax.tree.map(lambda s: jnp.zeros(s.shape, s.dtype), out.update),
                     jnp.zeros((), jnp.float32), jnp.zeros((), jnp.int32))

  def _zero_aggregate(self, client_fn, shared, chunk, rng):
    zeros = self._zero_aggregate_abstract(client_fn, shared, chunk, rng)
    return jax.device_put(zeros, NamedSharding(self.mesh, P()))

  # -- one client at a time ---------------------------------------------------------------------

  def _run_loop(self, client_fn, shared, cohort, rng):
    key = ("loop", client_fn)
    with self._lock:
      if key not in self._programs:
        def one(acc, shared, client, multiplier, key):
          out = client_fn(shared, client, key)
          weighted, w, nonfinite = _weigh(out, multiplier, True)
          acc = Aggregate(jax.tree.map(jnp.add, acc.update_sum, weighted), acc.weight_sum + w,
                          acc.num_nonfinite + nonfinite.astype(jnp.int32))
          return acc, out.metrics, nonfinite
        self._programs[key] = jax.jit(one, donate_argnums=(0,))
      one = self._programs[key]
    return self._per_client(one, client_fn, shared, cohort, rng, jit=True)

  def _run_debug(self, client_fn, shared, cohort, rng):
    def one(acc, shared, client, multiplier, key):
      out = client_fn(shared, client, key)
      weighted, w, nonfinite = _weigh(out, multiplier, True)
      acc = Aggregate(jax.tree.map(jnp.add, acc.update_sum, weighted), acc.weight_sum + w,
                      acc.num_nonfinite + nonfinite.astype(jnp.int32))
      return acc, out.metrics, nonfinite
    with jax.disable_jit():
      return self._per_client(one, client_fn, shared, cohort, rng, jit=False)

  def _per_client(self, one, client_fn, shared, cohort, rng, jit):
    acc = None
    per_part = []
    for part in cohort.parts:
      metrics, nonfinite = [], []
      for i in range(part.num_clients):
        client = ClientInput({k: v[i] for k, v in part.batch.items()}, part.mask[i], part.num_examples[i])
        key = jax.random.fold_in(rng, max(int(part.position[i]), 0))
        if acc is None:
          acc = self._zero_aggregate_abstract(client_fn, shared, part, rng)
        try:
          acc, m, nf = one(acc, shared, client, part.weight[i], key)
        except Exception as e:  # Tag the failure with the client; keep the original as the cause.
          if jit:
            raise
          cid = cohort.client_ids[part.position[i]] if part.position[i] >= 0 else "<padding>"
          raise ClientError(f"client {cid!r} (cohort position {int(part.position[i])}) failed: "
                            f"{type(e).__name__}: {e}") from e
        metrics.append(m)
        nonfinite.append(nf)
        self.stats.computed_example_steps += part.mask[i].size
      self.stats.real_example_steps += int(part.mask.sum())
      metrics, nonfinite = jax.device_get((metrics, nonfinite))
      per_part.append((part, {k: np.array([m[k] for m in metrics]) for k in metrics[0]}, np.array(nonfinite)))
    return acc, per_part


def _gather_per_client(cohort: Cohort, per_part) -> dict[str, np.ndarray]:
  """Scatters each part's per-client outputs back to cohort order, dropping padding clients."""
  out: dict[str, np.ndarray] = {}
  nonfinite = np.zeros(cohort.num_clients, bool)
  for part, metrics, nf in per_part:
    real = part.position >= 0
    pos = part.position[real]
    for k, v in metrics.items():
      if k not in out:
        out[k] = np.zeros((cohort.num_clients,) + v.shape[1:], v.dtype)
      out[k][pos] = v[real]
    nonfinite[pos] = nf[real]
  out["nonfinite"] = nonfinite
  return out


def aggregate_bytes(aggregate: Aggregate) -> int:
  """Bytes of the one model-sized result a round returns from the devices."""
  return tree_size_bytes(aggregate.update_sum)
