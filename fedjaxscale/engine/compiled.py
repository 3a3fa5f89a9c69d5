"""The compiled round: a device's lanes mapped inside ``jax.shard_map`` over the ``clients`` mesh,
reduced with a ``psum``, run in chunks of one shape added into a donated on-device accumulator,
each shape compiled once."""

import functools
import threading

import jax
import jax.numpy as jnp
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

from fedjaxscale.core.cohort import IDLE, chunk_sizes
from fedjaxscale.core.tree import tree_where
from fedjaxscale.engine.lanes import HostLanes, host_lanes, pad_lanes, slice_lanes
from fedjaxscale.engine.placement import CLIENTS, default_memory_budget, put_host, put_rows
from fedjaxscale.engine.program import Aggregate, accumulate, client_key, run_client, weigh, zero_aggregate

CPU_LANES_PER_DEVICE = 1024  # default chunk cap on CPU (see Engine)
CPU_UNROLL_STEPS = 8  # default: fully unroll local-step scans up to this long on CPU (see Engine)


class CompiledRounds:
  """The ``vmap`` backend: compiles, caches and runs the chunks of a cohort on ``mesh``."""

  def __init__(self, mesh, stats, lane_shapes: set, max_clients_per_chunk, memory_budget_bytes, scan_unroll):
    self.mesh = mesh
    self.stats = stats
    self.lane_shapes = lane_shapes
    self.max_clients_per_chunk = max_clients_per_chunk
    self.memory_budget_bytes = memory_budget_bytes
    self.scan_unroll = scan_unroll
    self.client_multiple = int(mesh.shape[CLIENTS])
    self._programs: dict = {}
    self._chunk_limits: dict = {}
    self._lock = threading.Lock()

  def run(self, program, shared, cohort, rng):
    acc, results = None, []
    for part in cohort.parts:
      lanes = host_lanes(part, cohort)
      features = part.features
      limit = self._chunk_limit(program, shared, lanes, features, rng)
      start = 0
      for size in chunk_sizes(part.num_lanes, self.client_multiple, limit):
        chunk = pad_lanes(slice_lanes(lanes, start, min(start + size, part.num_lanes)), size)
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

  def _put_sharded(self, lanes: HostLanes, features, abstract: bool = False):
    """The chunk's device inputs (or their shapes, to compile): each process reads its own lanes."""
    sharding = NamedSharding(self.mesh, P(CLIENTS))
    small = tuple(x for x in lanes[1:] if x is not None)
    if abstract:
      batch = {
        k: jax.ShapeDtypeStruct(lanes.rows.shape + x.shape[1:], x.dtype, sharding=sharding) for k, x in features.items()
      }
      return (batch,) + tuple(jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=sharding) for x in small)
    return (put_rows(features, lanes.rows, sharding),) + tuple(put_host(x, sharding) for x in small)

  def _signature(self, program, shared, lanes: HostLanes, features, rng):
    abstract = tuple((tuple(x.shape), str(x.dtype)) for x in jax.tree.leaves((shared, rng, tuple(lanes))))
    specs = tuple((k, x.shape[1:], str(x.dtype)) for k, x in sorted(features.items()))
    return (program, jax.tree.structure((shared, tuple(lanes))), abstract, specs)

  def _program(self, program, shared, lanes: HostLanes, features, rng):
    key = self._signature(program, shared, lanes, features, rng)
    with self._lock:
      if key not in self._programs:
        self._programs[key] = self._compile(program, shared, lanes, features, rng)
      return self._programs[key]

  def _compile(self, program, shared, lanes: HostLanes, features, rng):
    mesh = self.mesh
    packed = lanes.start is not None

    def one_client_lanes(shared, data, rng):
      batch, mask, owner, num_examples, weight = data
      keys = jax.vmap(client_key, in_axes=(None, 0))(rng, owner)
      out = jax.vmap(
        functools.partial(run_client, program, unroll=self._unroll(mask.shape[1])), in_axes=(None, 0, 0, 0, 0)
      )(shared, batch, mask, num_examples, keys)
      weighted, w, nonfinite = jax.vmap(weigh)(out, weight, owner != IDLE)
      return Aggregate(weighted, w, nonfinite.astype(jnp.int32)), out.metrics, nonfinite

    def packed_lanes(shared, data, rng):
      def lane(batch, mask, owner, start, end, local_step, num_examples, weight):
        carry = program.init(shared, rng)
        zero = jax.tree.map(jnp.zeros_like, program.finish(shared, carry, jnp.zeros((), jnp.float32)).update)
        acc = Aggregate(zero, jnp.zeros((), jnp.float32), jnp.zeros((), jnp.int32))

        def body(state, xs):
          carry, acc = state
          b, m, o, st, en, ls, n, wm = xs
          key = client_key(rng, o)
          carry = tree_where(st, program.init(shared, key), carry)
          carry = program.step(shared, carry, b, m, jax.random.fold_in(key, ls))
          out = program.finish(shared, carry, n)
          weighted, w, nonfinite = weigh(out, wm * en, (o != IDLE) & en)
          acc = accumulate(acc, Aggregate(weighted, w, nonfinite.astype(jnp.int32)))
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
      return accumulate(acc, total), metrics, nonfinite

    data = self._put_sharded(lanes, features, abstract=True)
    replicated = NamedSharding(mesh, P())
    acc = jax.eval_shape(lambda: zero_aggregate(program, shared, rng))
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

  def _chunk_limit(self, program, shared, lanes: HostLanes, features, rng) -> int | None:
    """Lanes per chunk: the user's bound, else what fits the memory budget (and the CPU cap)."""
    if self.max_clients_per_chunk is not None:
      return self.max_clients_per_chunk
    cap = CPU_LANES_PER_DEVICE * self.client_multiple if jax.default_backend() == "cpu" else None
    limit = self._memory_limit(program, shared, lanes, features, rng, cap)
    return cap if limit is None else limit

  def _memory_limit(self, program, shared, lanes: HostLanes, features, rng, cap: int | None) -> int | None:
    """The lanes that fit the memory budget, from XLA's analysis of a probe chunk (None: all)."""
    num_lanes = lanes.mask.shape[0]
    probe_size = chunk_sizes(num_lanes, self.client_multiple, cap)[0]
    probe = pad_lanes(slice_lanes(lanes, 0, min(num_lanes, probe_size)), probe_size)
    key = self._signature(program, shared, probe, features, rng)
    if key in self._chunk_limits:
      return self._chunk_limits[key]
    budget = self.memory_budget_bytes or default_memory_budget()
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
