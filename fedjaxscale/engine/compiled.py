"""The compiled round: a device's lanes mapped inside ``jax.shard_map`` over the ``clients`` mesh,
reduced with a ``psum``, run in chunks of one shape added into a donated on-device accumulator,
each shape compiled once (and, under ``strategy="auto"``, its execution strategy chosen once by
timing the candidates on the shape's first chunk)."""

import threading
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

from fedjaxscale.core.cohort import IDLE, chunk_sizes, take_rows
from fedjaxscale.core.tree import tree_where
from fedjaxscale.engine import strategies
from fedjaxscale.engine.autotune import StrategyChooser
from fedjaxscale.engine.lanes import HostLanes, host_lanes, pad_lanes, slice_lanes
from fedjaxscale.engine.placement import (
  CLIENTS,
  Resident,
  allow_transfers,
  default_memory_budget,
  feature_identity,
  feature_specs,
  put_host,
  put_rows,
  replicated_sharding,
  replicated_specs,
)
from fedjaxscale.engine.program import Aggregate, accumulate, client_key, run_client, weigh, when, zero_aggregate
from fedjaxscale.engine.rounds import RoundsRunner
from fedjaxscale.engine.strategies import Strategy

CPU_LANES_PER_DEVICE = 1024  # default chunk cap on CPU (see Engine)
CPU_UNROLL_STEPS = 8  # default: fully unroll local-step scans up to this long on CPU (see Engine)


class Compiled(NamedTuple):
  """One shape's compiled round under one strategy, and the program making its accumulator's zeros."""

  step: jax.stages.Compiled
  zeros: jax.stages.Compiled
  strategy: Strategy
  has_conv: bool


class CompiledRounds(StrategyChooser, RoundsRunner):
  """The ``vmap`` backend: compiles, caches and runs the chunks of a cohort on ``mesh``.

  ``strategy`` is a ``Strategy``, or None to choose one per shape by timing (``"auto"``).
  ``resident`` maps the identity of feature arrays made resident (``Engine.make_resident``) to
  their replicated device copies.
  """

  def __init__(self, mesh, stats, lane_shapes: set, max_clients_per_chunk, memory_budget_bytes, scan_unroll, strategy):
    self.mesh = mesh
    self.stats = stats
    self.lane_shapes = lane_shapes
    self.max_clients_per_chunk = max_clients_per_chunk
    self.memory_budget_bytes = memory_budget_bytes
    self.scan_unroll = scan_unroll
    self.strategy = strategy
    self.client_multiple = int(mesh.shape[CLIENTS])
    self.choices: list[dict] = []
    self._choice_programs: list = []  # the client program of each of ``choices``
    self.adopted: dict = {}  # shape key -> Strategy recorded by an earlier process of the run (resume)
    self.resident: dict = {}
    self._programs: dict = {}  # signature -> the chosen Compiled
    self._candidates: dict = {}  # (signature, strategy) -> Compiled, while a shape is being tuned
    self._chunk_limits: dict = {}
    self._rounds_programs: dict = {}  # (signature, rounds, server update, shared_of) -> ``RoundsRunner``'s program
    self._one_chunk_sizes: dict = {}  # signature without the lane count -> lane counts run as one chunk
    self._lock = threading.Lock()

  def run(self, program, shared, cohort, rng):
    acc, results = None, []
    for part in cohort.parts:
      lanes = host_lanes(part, cohort)
      features = self._features(part.features)
      args = self._argument_signature(shared, rng)
      limit = self._chunk_limit(program, shared, lanes, features, rng, args)
      start = 0
      for size in self._chunk_sizes(program, shared, lanes, features, rng, limit, args):
        chunk = pad_lanes(slice_lanes(lanes, start, min(start + size, part.num_lanes)), size)
        start += size
        key = self._signature(program, shared, chunk, features, rng, args=args)
        with self._lock:
          entry = self._programs.get(key)
        data = self._put_sharded(chunk, features)
        if entry is None:
          entry = self._choose(key, program, shared, chunk, features, data, rng)
        with allow_transfers():  # host inputs (``_put_sharded``), ``replicated_arguments``
          acc, metrics, nonfinite = entry.step(
            entry.zeros() if acc is None else acc, shared, self._device_features(features), data, rng
          )
        results.append((chunk, metrics, nonfinite))
        self.stats.chunks += 1
        self.stats.computed_example_steps += chunk.mask.size
    return acc, results

  # -- residency ------------------------------------------------------------------------------

  def _features(self, features):
    """``_Resident`` when the part's features are the resident ones, else the host features."""
    key = feature_identity(features)
    return self.resident.get(key, features)

  @staticmethod
  def _device_features(features):
    return features.arrays if isinstance(features, Resident) else {}

  # -- inputs ---------------------------------------------------------------------------------

  def _put_sharded(self, lanes: HostLanes, features, abstract: bool = False):
    """The chunk's inputs (or their shapes, to compile): each process reads its own lanes.

    With resident features only the row indices (int32) cross; otherwise the examples. In one
    process these are the host arrays themselves: the compiled call copies them in one batched
    transfer, several times cheaper than placing them first (``device_put`` costs ~0.1 ms an
    array). Call the program under ``jax.transfer_guard("allow")``.
    """
    sharding = NamedSharding(self.mesh, P(CLIENTS))
    small = tuple(x for x in lanes[1:] if x is not None)
    resident = isinstance(features, Resident)
    if abstract:
      if resident:
        source = jax.ShapeDtypeStruct(lanes.rows.shape, jnp.int32, sharding=sharding)
      else:
        source = {
          k: jax.ShapeDtypeStruct(lanes.rows.shape + x.shape[1:], x.dtype, sharding=sharding)
          for k, x in features.items()
        }
      return (source,) + tuple(jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=sharding) for x in small)
    if jax.process_count() == 1:
      return (lanes.rows.astype(np.int32) if resident else take_rows(features, lanes.rows),) + small
    if resident:
      return tuple(put_host((lanes.rows.astype(np.int32),) + small, sharding))
    return (put_rows(features, lanes.rows, sharding),) + tuple(put_host(small, sharding))

  @staticmethod
  def _argument_signature(shared, rng) -> tuple:
    """The part of a signature that ``shared`` and ``rng`` make (computed once a round)."""
    return jax.tree.structure(shared), tuple((x.shape, x.dtype) for x in jax.tree.leaves((shared, rng)))

  def _signature(
    self, program, shared, lanes: HostLanes, features, rng, num_lanes: int | None = None, args: tuple | None = None
  ):
    """What a compiled program is cached under; ``num_lanes`` stands for the lanes' own count
    (the key of ``lanes`` padded or cut to that many, without building them); ``args``:
    ``_argument_signature(shared, rng)`` when already computed."""
    lead = lanes.mask.shape[0] if num_lanes is None else num_lanes
    structure, leaves = self._argument_signature(shared, rng) if args is None else args
    abstract = leaves + tuple(None if x is None else ((lead,) + x.shape[1:], x.dtype) for x in lanes)
    if isinstance(features, Resident):
      specs = ("resident",) + tuple((k, x.shape, x.dtype) for k, x in sorted(features.arrays.items()))
    else:
      specs = feature_specs(features)
    return (program, structure, abstract, specs)

  # -- compiling and choosing -----------------------------------------------------------------

  def _candidate(self, key, strategy: Strategy, program, shared, lanes, features, rng) -> Compiled:
    with self._lock:
      if (key, strategy) not in self._candidates:
        self._candidates[(key, strategy)] = self._compile(strategy, program, shared, lanes, features, rng)
      return self._candidates[(key, strategy)]

  def _shape(self, lanes: HostLanes, features) -> dict:
    """A chunk's shape as ``strategy_choices`` records it."""
    return {
      "lanes": lanes.num_lanes,
      "steps": int(lanes.mask.shape[1]),
      "batch": int(lanes.mask.shape[2]),
      "packed": lanes.packed,
      "devices": self.client_multiple,
      "resident": isinstance(features, Resident),
    }

  def _compile(self, strategy: Strategy, program, shared, lanes: HostLanes, features, rng) -> Compiled:
    step = self.step_function(strategy, program, lanes, features)
    data = self._put_sharded(lanes, features, abstract=True)
    shared, rng, device_features, acc = self.abstract_inputs(program, shared, features, rng)
    # A fresh callable per strategy: the convolution implementation is read at trace time.
    with strategy.trace_context():
      traced = jax.jit(lambda *a: step(*a), donate_argnums=(0,)).trace(acc, shared, device_features, data, rng)
    has_conv = strategies.has_primitive(traced.jaxpr, "conv_general_dilated") or strategy.conv == "patches"
    compiled = traced.lower().compile()
    # The accumulator's zeros are made on the devices by a program of their own: no per-round
    # tracing, no host-to-device transfer.
    replicated = replicated_sharding(self.mesh)
    zeros = jax.jit(lambda: jax.tree.map(jnp.zeros_like, acc), out_shardings=replicated).lower().compile()
    self.stats.compiles += 1
    self.lane_shapes.add(tuple(lanes.mask.shape[:2]))
    return Compiled(compiled, zeros, strategy, has_conv)

  def abstract_inputs(self, program, shared, features, rng):
    """``(shared, rng, device_features, accumulator)`` as replicated ``ShapeDtypeStruct``s: a
    round's program is compiled for replicated inputs whether or not they are placed yet
    (``replicated_arguments``)."""
    replicated = replicated_sharding(self.mesh)
    shared, rng = replicated_specs((shared, rng), self.mesh)
    device_features = jax.tree.map(
      lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=replicated), self._device_features(features)
    )
    acc = jax.eval_shape(lambda s, r: zero_aggregate(program, s, r), shared, rng)
    acc = jax.tree.map(lambda s: jax.ShapeDtypeStruct(s.shape, s.dtype, sharding=replicated), acc)
    return shared, rng, device_features, acc

  def step_function(self, strategy: Strategy, program, lanes: HostLanes, features):
    """The chunk's round as a traceable function ``(acc, shared, device_features, data, rng) ->
    (acc, metrics, nonfinite)`` (trace it under ``strategy.trace_context()``)."""
    mesh = self.mesh
    packed = lanes.packed
    resident = isinstance(features, Resident)
    unroll = self._unroll(int(lanes.mask.shape[1]))

    def fetch(device_features, source):
      if not resident:
        return source
      return {k: jnp.take(x, source, axis=0, mode="clip") for k, x in device_features.items()}

    def per_shard(shared, device_features, data, rng):
      zero = zero_aggregate(program, shared, rng)

      def one_client_lane(x):
        source, mask, owner, num_examples, weight = x
        key = client_key(rng, owner)
        out = run_client(program, shared, fetch(device_features, source), mask, num_examples, key, unroll)
        weighted, w, nonfinite = weigh(out, weight, owner != IDLE)
        return Aggregate(weighted, w, nonfinite.astype(jnp.int32)), out.metrics, nonfinite

      def packed_lane(x):
        source, mask, owner, start, end, local_step, num_examples, weight = x
        batch = fetch(device_features, source)

        def body(state, xs):
          carry, acc = state
          b, m, o, st, en, ls, n, wm = xs
          key = client_key(rng, o)
          carry = tree_where(st, program.init(shared, key), carry)
          carry = program.step(shared, carry, b, m, jax.random.fold_in(key, ls))

          def finish(carry):
            out = program.finish(shared, carry, n)
            return *weigh(out, wm, o != IDLE), out.metrics

          # Metrics are read at a client's last step only (``lanes.per_client``).
          weighted, w, nonfinite, metrics = when(en, finish, carry)
          acc = accumulate(acc, Aggregate(weighted, w, nonfinite.astype(jnp.int32)))
          return (carry, acc), (metrics, nonfinite)

        (_, acc), (metrics, nonfinite) = jax.lax.scan(
          body,
          (program.init(shared, rng), zero),
          (batch, mask, owner, start, end, local_step, num_examples, weight),
          unroll=unroll,
        )
        return acc, metrics, nonfinite

      lane = packed_lane if packed else one_client_lane
      local, metrics, nonfinite = strategies.map_lanes(lane, strategy, data, zero)
      # Per-client scalars are tiny: gather them to every device (and so every process: the
      # selection policy runs on each host with the same inputs).
      gathered = jax.lax.all_gather((metrics, nonfinite), CLIENTS, tiled=True)
      return jax.lax.psum(local, CLIENTS), *gathered

    # check_vma=False: client programs create constants (zeros for their running sums) that the
    # varying-axes checker would ask every algorithm author to pcast; the collectives here are a
    # psum of genuinely per-device partial sums and an all_gather, which need no such typing.
    sharded = jax.shard_map(
      per_shard, mesh=mesh, in_specs=(P(), P(), P(CLIENTS), P()), out_specs=(P(), P(), P()), check_vma=False
    )

    def step(acc, shared, device_features, data, rng):
      total, metrics, nonfinite = sharded(shared, device_features, data, rng)
      return accumulate(acc, total), metrics, nonfinite

    return step

  def _unroll(self, steps: int) -> int | bool:
    if self.scan_unroll is not None:
      return self.scan_unroll
    return True if jax.default_backend() == "cpu" and steps <= CPU_UNROLL_STEPS else 1

  # -- chunk size -----------------------------------------------------------------------------

  def _chunk_sizes(self, program, shared, lanes: HostLanes, features, rng, limit, args) -> list[int]:
    """The lane counts of a part's chunks: ``chunk_sizes``, except that a part run as one chunk
    may skip its bucket's padding (``_one_chunk_size``)."""
    sizes = chunk_sizes(lanes.num_lanes, self.client_multiple, limit)
    if len(sizes) != 1:
      return sizes
    family = self._signature(program, shared, lanes, features, rng, num_lanes=0, args=args)
    return [self._one_chunk_size(family, lanes.num_lanes, sizes[0])]

  def _one_chunk_size(self, family, num_lanes: int, bucket: int) -> int:
    """The lanes a part of ``num_lanes`` lanes runs as, when it fits one chunk.

    Buckets (at most an eighth of padding) keep cohorts of varying sizes to a few compiled shapes;
    but a loop whose cohorts all have the same size, the common case (K clients a round), would pay
    the padding every round: 100 lanes run as 104. So the first part of a program family (its
    signature but for the lane count) runs as it is, rounded up to the devices only; a later part
    runs as the smallest lane count already run that holds it and is at most its bucket, else as its
    bucket. A family compiles at most one shape beyond its buckets.
    """
    exact = -(-num_lanes // self.client_multiple) * self.client_multiple
    with self._lock:
      known = self._one_chunk_sizes.setdefault(family, set())
      fits = [s for s in known if exact <= s <= bucket]
      size = min(fits) if fits else (exact if not known else bucket)
      known.add(size)
    return size

  def _chunk_limit(self, program, shared, lanes: HostLanes, features, rng, args: tuple | None = None) -> int | None:
    """Lanes per chunk: the user's bound, else what fits the memory budget (and the CPU cap)."""
    if self.max_clients_per_chunk is not None:
      return self.max_clients_per_chunk
    cap = CPU_LANES_PER_DEVICE * self.client_multiple if jax.default_backend() == "cpu" else None
    limit = self._memory_limit(program, shared, lanes, features, rng, cap, args)
    return cap if limit is None else limit

  def _memory_limit(
    self, program, shared, lanes: HostLanes, features, rng, cap: int | None, args: tuple | None = None
  ) -> int | None:
    """The lanes that fit the memory budget, from XLA's analysis of a probe chunk (None: all).

    The probe is compiled with the strategy that will run when that is known (explicit, or a timed
    sibling's winner: ``_probe_strategy``), else with ``vmap`` (which holds every lane's
    intermediate values at once, the most any candidate needs); it is the shape's first chunk
    when that fits, so its compilation is the one that runs, or one of the candidates'.
    """
    num_lanes = lanes.mask.shape[0]
    probe_size = self._chunk_sizes(program, shared, lanes, features, rng, cap, args)[0]
    key = self._signature(program, shared, lanes, features, rng, num_lanes=probe_size, args=args)
    if key in self._chunk_limits:
      return self._chunk_limits[key]
    probe = pad_lanes(slice_lanes(lanes, 0, min(num_lanes, probe_size)), probe_size)
    budget = self.memory_budget_bytes or default_memory_budget()
    with self._lock:
      chosen = self._programs.get(key)
    probe_strategy = self._probe_strategy(program, probe, features)
    if chosen is None:
      chosen = self._candidate(key, probe_strategy, program, shared, probe, features, rng)
    stats = chosen.step.memory_analysis()
    used = 0
    if stats is not None:
      used = stats.temp_size_in_bytes + stats.argument_size_in_bytes + stats.output_size_in_bytes
    limit = None
    if used > budget:
      per_lane = max(1, used // probe_size)
      limit = max(self.client_multiple, budget // per_lane)
    self._chunk_limits[key] = limit
    if limit is not None:  # the probe is not a shape that will run: drop its executable
      with self._lock:
        self._candidates.pop((key, probe_strategy), None)
    return limit
