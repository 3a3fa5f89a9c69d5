"""The client-state path's compiled backend (``vmap``): lanes that carry their clients' states.

``run_stateful`` (``engine/state.py``) calls ``_run_vmap`` for the ``vmap`` backend: the cohort's
stored states are gathered into lanes (one client's state a lane, or every client's of a packed
lane), the lanes run under the engine's strategy inside ``jax.shard_map``, and the new states come
back sharded over the ``clients`` axis next to the reduced aggregate. ``local_clients`` names the
clients whose lanes sit on this process's devices. The helpers shared with the per-client path
(``_initial``, ``_finish``, the program cache) live here too.
"""

import functools
import threading
import time
import weakref
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

from fedjaxscale.core.buckets import bucket_size
from fedjaxscale.core.cohort import IDLE, Cohort, chunk_sizes
from fedjaxscale.core.tree import tree_all_finite, tree_where
from fedjaxscale.core.types import PyTree
from fedjaxscale.engine import autotune
from fedjaxscale.engine.compiled import CPU_LANES_PER_DEVICE, CPU_UNROLL_STEPS
from fedjaxscale.engine.executor import Engine
from fedjaxscale.engine.lanes import HostLanes, host_lanes, pad_lanes, slice_lanes
from fedjaxscale.engine.placement import CLIENTS, default_memory_budget, put_host, put_rows
from fedjaxscale.engine.program import Aggregate, accumulate, client_key, weigh, when
from fedjaxscale.engine.strategies import Strategy, map_lanes, parse_strategy

LOCK = threading.Lock()
# Compiled stateful programs, per engine (the engine's own cache holds its stateless programs).
_CACHES: "weakref.WeakKeyDictionary[Engine, dict]" = weakref.WeakKeyDictionary()


def program_cache(engine: Engine) -> dict:
  with LOCK:
    return _CACHES.setdefault(engine, {})


def _unroll(engine: Engine, steps: int) -> int | bool:
  """The local-step scan's unroll, chosen as the engine chooses it for stateless programs."""
  if engine.scan_unroll is not None:
    return engine.scan_unroll
  return True if jax.default_backend() == "cpu" and steps <= CPU_UNROLL_STEPS else 1


def _fixed_strategy(engine: Engine, packed: bool) -> Strategy | None:
  """How a device maps its lanes when that is not timed: the engine's explicit strategy; under
  ``"auto"``, ``vmap`` off the CPU and, on CPU, ``map`` for packed lanes, where a lane run alone
  finishes each client once (under ``map:4`` or ``vmap`` the finish is a select, computed at every
  step: 7.6 s against 1.3 s a round for top-k with error feedback on a 299k-parameter MLP,
  ``benchmarks/privacy.py --workload mlp``). None: time the candidates (``_choose``)."""
  parsed = parse_strategy(getattr(engine, "strategy", "vmap"))
  if parsed is not None:
    return parsed
  if jax.default_backend() != "cpu":
    return Strategy("vmap")
  return Strategy("map") if packed else None


def _choose(engine: Engine, program, chunk: HostLanes, build, shared, data, rng) -> tuple[Strategy, dict]:
  """``"auto"`` on CPU for one client a lane: ``vmap`` or ``map:4``, timed on the chunk.

  As the stateless path's tuner (``autotune.StrategyChooser``) does: a shape recorded by an
  earlier process of the run is adopted, and one that differs from a timed shape only in its lane
  count takes that winner; else ``vmap`` and ``map:4`` (4 lanes' intermediate values at a time)
  are timed by the tuner's own rules (``autotune.time_candidates``: ``vmap`` stays when a chunk
  takes under ``AUTOTUNE_MIN_SECONDS``, and gives way only to one ``AUTOTUNE_MARGIN`` faster).
  A ``vmap`` program over the memory budget (XLA's memory analysis; this path does not cut chunks
  by it) is not run: ``map:4``.
  ``build(strategy)`` compiles (or returns) the chunk's program under a strategy.

  Returns:
    the strategy and its ``strategy_choices`` record (``shape`` has ``"state": True``).
  """
  shape = {
    "lanes": chunk.num_lanes,
    "steps": int(chunk.mask.shape[1]),
    "batch": int(chunk.mask.shape[2]),
    "packed": False,
    "devices": engine.client_multiple,
    "resident": False,
    "state": True,
  }
  runner = engine._runner
  adopted = runner.adopted.get(autotune.shape_key(shape))
  if adopted is not None:
    return adopted, {"shape": shape, "candidates": {}, "chosen": str(adopted), "adopted": True}
  vmap, grouped = Strategy("vmap"), Strategy("map", 4)
  sibling = runner._timed_sibling(program, shape)  # the same program timed at another lane count
  if sibling is not None and sibling["chosen"] != str(vmap):
    return grouped, {"shape": shape, "candidates": {}, "chosen": str(grouped), "timed_at": dict(sibling["shape"])}
  stats = build(vmap)[0].memory_analysis()
  used = 0 if stats is None else stats.temp_size_in_bytes + stats.argument_size_in_bytes + stats.output_size_in_bytes
  budget = engine.memory_budget_bytes or default_memory_budget()
  if autotune._agreed_max(float(used > budget)) > 0:
    return grouped, {"shape": shape, "candidates": {}, "chosen": str(grouped), "vmap_bytes": int(used)}
  if sibling is not None:
    return vmap, {"shape": shape, "candidates": {}, "chosen": str(vmap), "timed_at": dict(sibling["shape"])}
  seconds, chosen = autotune.time_candidates([vmap, grouped], lambda s: _time(build(s), shared, data, rng))
  return chosen, {"shape": shape, "candidates": seconds, "chosen": str(chosen)}


def _time(compiled, shared, data, rng) -> float:
  """Seconds of one run of a chunk (every process makes the same runs: each is a collective)."""
  step, zeros = compiled
  t0 = time.perf_counter()
  jax.block_until_ready(step(zeros(), shared, data, rng))
  return time.perf_counter() - t0


def _put_lanes(lanes: HostLanes, features, sharding):
  """A chunk's examples and lane arrays on the devices (each process reads its own lanes)."""
  small = tuple(x for x in lanes[1:] if x is not None)
  return (put_rows(features, lanes.rows, sharding),) + tuple(put_host(small, sharding))  # one batched transfer


class _Slots(NamedTuple):
  """Which cohort position each lane's j-th client is (``IDLE``: none), and each step's j."""

  slots: np.ndarray  # int32 [lanes, M]
  index: np.ndarray  # int32 [lanes, steps]


def _slots(lanes: HostLanes) -> _Slots:
  if lanes.start is None:  # one client per lane
    owner = lanes.owner.reshape(-1, 1)
    return _Slots(owner.astype(np.int32), np.zeros(lanes.mask.shape[:2], np.int32))
  first = lanes.start & (lanes.owner != IDLE)
  index = np.maximum(np.cumsum(first, axis=1) - 1, 0).astype(np.int32)
  # Clients per lane, bucketed: the states' shape [lanes, width, ...] is part of the compiled
  # program's signature, so a reused (lanes, steps) shape must not recompile for every width.
  width = bucket_size(max(1, int(first.sum(1).max())))
  slots = np.full((lanes.owner.shape[0], width), IDLE, np.int32)
  lane, step = np.nonzero(first)
  slots[lane, index[lane, step]] = lanes.owner[lane, step]
  return _Slots(slots, index)


def _take(states: PyTree, fresh: np.ndarray, slots: np.ndarray):
  """Host arrays of the lanes' states ``[lanes, M, ...]`` and fresh flags (idle slots: fresh)."""
  safe = np.maximum(slots, 0)
  taken = jax.tree.map(lambda x: np.asarray(x)[safe], states)
  return taken, np.where(slots == IDLE, True, fresh[safe])


def initial_carry(program, shared, key, stored, fresh):
  state = tree_where(fresh, program.state_init(shared), stored)
  return state, program.init(shared, key, state)


def finish_client(program, shared, carry, n, multiplier, real, old_state):
  out, new_state = program.finish(shared, carry, n)
  weighted, w, nonfinite = weigh(out, multiplier, real)
  written = real & ~nonfinite & tree_all_finite(new_state)
  new_state = tree_where(written, new_state, old_state)
  return out, weighted, w, nonfinite, new_state, written


def _compile(engine, program, shared, data, rng, packed: bool, unroll, strategy: Strategy):
  mesh = engine.mesh

  def zero_aggregate(shared, rng):
    state = program.state_init(shared)
    carry = program.init(shared, rng, state)
    out, _ = program.finish(shared, carry, jnp.zeros((), jnp.float32))
    return Aggregate(jax.tree.map(jnp.zeros_like, out.update), jnp.zeros((), jnp.float32), jnp.zeros((), jnp.int32))

  def client(shared, rng, lane):
    """One lane holding one client: ``(aggregate, (metrics, new state [1, ...], written [1]), nonfinite)``."""
    (batch, mask, owner, n, w), stored, fresh = lane
    key = client_key(rng, owner)
    state, carry = initial_carry(program, shared, key, jax.tree.map(lambda x: x[0], stored), fresh[0])

    def body(carry, xs):
      b, m, s = xs
      return program.step(shared, carry, b, m, jax.random.fold_in(key, s)), None

    steps = jnp.arange(mask.shape[0], dtype=jnp.int32)
    carry, _ = jax.lax.scan(body, carry, (batch, mask, steps), unroll=unroll)
    out, weighted, w, nonfinite, new_state, written = finish_client(program, shared, carry, n, w, owner != IDLE, state)
    agg = Aggregate(weighted, w, nonfinite.astype(jnp.int32))
    return agg, (out.metrics, jax.tree.map(lambda x: x[None], new_state), written[None]), nonfinite

  def packed_lane(shared, rng, lane):
    """A lane of packed clients: per-step metrics and nonfinite, per-slot new states."""
    (batch, mask, owner, start, end, local_step, num_examples, weight), stored, fresh, index = lane
    pick = functools.partial(jax.tree.map, lambda x: x[0])
    state, carry = initial_carry(program, shared, rng, pick(stored), fresh[0])
    out, _ = program.finish(shared, carry, jnp.zeros((), jnp.float32))
    zero = Aggregate(jax.tree.map(jnp.zeros_like, out.update), jnp.zeros((), jnp.float32), jnp.zeros((), jnp.int32))
    written = jnp.zeros(fresh.shape, bool)

    def body(loop, xs):
      carry, state, acc, new_states, written = loop
      b, m, o, st, en, ls, n, wm, j = xs
      key = client_key(rng, o)
      loaded, init_carry = initial_carry(program, shared, key, jax.tree.map(lambda x: x[j], stored), fresh[j])
      carry = tree_where(st, init_carry, carry)
      state = tree_where(st, loaded, state)
      carry = program.step(shared, carry, b, m, jax.random.fold_in(key, ls))
      real = (o != IDLE) & en

      def finish(carry, state):
        out, weighted, w, nonfinite, new_state, wrote = finish_client(program, shared, carry, n, wm, o != IDLE, state)
        return out.metrics, weighted, w, nonfinite, new_state, wrote

      metrics, weighted, w, nonfinite, new_state, wrote = when(en, finish, carry, state)  # zeros before its end
      acc = accumulate(acc, Aggregate(weighted, w, nonfinite.astype(jnp.int32)))
      new_states = jax.tree.map(lambda s, v: s.at[j].set(jnp.where(real, v, s[j])), new_states, new_state)
      written = written.at[j].set(jnp.where(real, wrote, written[j]))
      return (carry, state, acc, new_states, written), (metrics, nonfinite)

    xs = (batch, mask, owner, start, end, local_step, num_examples, weight, index)
    (_, _, acc, new_states, written), (metrics, nonfinite) = jax.lax.scan(
      body, (carry, state, zero, stored, written), xs
    )
    return acc, (metrics, new_states, written), nonfinite

  def lanes(shared, data, rng):
    lane_fn = functools.partial(packed_lane if packed else client, shared, rng)
    acc, (metrics, new_states, written), nonfinite = map_lanes(lane_fn, strategy, data, zero_aggregate(shared, rng))
    return acc, metrics, nonfinite, new_states, written

  def per_shard(shared, data, rng):
    local, metrics, nonfinite, new_states, written = lanes(shared, data, rng)  # local: the device's sum
    gathered = jax.lax.all_gather((metrics, nonfinite), CLIENTS, tiled=True)
    return jax.lax.psum(local, CLIENTS), *gathered, new_states, written

  sharded = jax.shard_map(
    per_shard,
    mesh=mesh,
    in_specs=(P(), P(CLIENTS), P()),
    out_specs=(P(), P(), P(), P(CLIENTS), P(CLIENTS)),
    check_vma=False,
  )

  def step(acc, shared, data, rng):
    total, metrics, nonfinite, new_states, written = sharded(shared, data, rng)
    return accumulate(acc, total), metrics, nonfinite, new_states, written

  replicated = NamedSharding(mesh, P())
  acc = jax.tree.map(
    lambda s: jax.ShapeDtypeStruct(s.shape, s.dtype, sharding=replicated), jax.eval_shape(zero_aggregate, shared, rng)
  )
  with strategy.trace_context():
    compiled = jax.jit(step, donate_argnums=(0,)).lower(acc, shared, data, rng).compile()
  zeros = jax.jit(lambda: jax.tree.map(jnp.zeros_like, acc), out_shardings=replicated).lower().compile()
  engine.stats.compiles += 1
  return compiled, zeros


def _abstract(tree):
  return jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=getattr(x, "sharding", None)), tree)


def _fetch_local(x: jax.Array) -> list[tuple[slice, np.ndarray]]:
  """This process's shards of a lane-sharded output: (lane slice, host array) pairs."""
  out, seen = [], set()
  for shard in x.addressable_shards:
    rows = shard.index[0]
    key = (rows.start, rows.stop)
    if key not in seen:
      seen.add(key)
      out.append((rows, np.asarray(shard.data)))
  return out


class _Chunk(NamedTuple):
  """One compiled call's lanes: their host arrays, each lane's client slots, each step's slot."""

  part: Any
  lanes: HostLanes
  slots: np.ndarray  # int32 [lanes, M]: cohort positions (IDLE: none)
  index: np.ndarray  # int32 [lanes, steps]: which slot each step belongs to
  packed: bool


def _chunks(engine: Engine, cohort: Cohort):
  """The vmap backend's chunks, in the order they run (every process computes the same ones)."""
  for part in cohort.parts:
    lanes = host_lanes(part, cohort)
    slots_all = _slots(lanes)
    limit = engine.max_clients_per_chunk
    if limit is None and jax.default_backend() == "cpu":
      limit = CPU_LANES_PER_DEVICE * engine.client_multiple
    first = 0
    for size in chunk_sizes(part.num_lanes, engine.client_multiple, limit):
      stop = min(first + size, part.num_lanes)
      chunk = pad_lanes(slice_lanes(lanes, first, stop), size)
      slots = _pad(slots_all.slots[first:stop], size, IDLE)
      index = _pad(slots_all.index[first:stop], size, 0)
      first = stop
      yield _Chunk(part, chunk, slots, index, lanes.start is not None)


def local_clients(engine: Engine, cohort: Cohort, devices=None) -> np.ndarray:
  """Which cohort positions run on ``devices`` (default: this process's devices of the mesh).

  Only these clients' stored states are read by ``run_stateful`` on this process (the other rows
  of ``states`` may hold anything), and only these get ``written`` set: in a multi-process run
  each process gathers and scatters the rows of its own devices' clients. The loop and debug
  backends run every client in every process.

  Returns:
    bool ``[clients]``.
  """
  if engine.backend != "vmap":
    return np.ones(cohort.num_clients, bool)
  if devices is None:
    devices = [d for d in engine.mesh.devices.flat if d.process_index == jax.process_index()]
  devices = set(devices)
  if devices >= set(engine.mesh.devices.flat):  # one process: no need to lay out the chunks twice
    return np.ones(cohort.num_clients, bool)
  sharding = NamedSharding(engine.mesh, P(CLIENTS))
  local = np.zeros(cohort.num_clients, bool)
  for c in _chunks(engine, cohort):
    for device, index in sharding.devices_indices_map((c.slots.shape[0],)).items():
      if device in devices:
        s = c.slots[index[0]]
        local[s[s != IDLE]] = True
  return local


def run_vmap(engine, program, shared, cohort, rng, states, fresh, new_states, written):
  shared, rng = engine.place_replicated((shared, rng))
  sharding = NamedSharding(engine.mesh, P(CLIENTS))
  acc, results, outputs = None, [], []
  for part, chunk, slots, index, packed in _chunks(engine, cohort):
    stored, is_fresh = _take(states, fresh, slots)
    batch_and_lanes = _put_lanes(chunk, part.features, sharding)
    put = functools.partial(put_host, sharding=sharding)
    data = (batch_and_lanes, jax.tree.map(put, stored), put(is_fresh))
    if packed:
      data = data + (put(index),)
    compiled, zeros = _program(engine, program, chunk, packed, shared, data, rng)
    acc, metrics, nonfinite, lane_states, lane_written = compiled(zeros() if acc is None else acc, shared, data, rng)
    results.append((chunk, metrics, nonfinite))
    outputs.append((slots, lane_states, lane_written))
    engine.stats.chunks += 1
    engine.stats.computed_example_steps += chunk.mask.size
  host = jax.device_get([(m, nf) for _, m, nf in results])
  for slots, lane_states, lane_written in outputs:
    leaves, treedef = jax.tree.flatten(lane_states)
    fetched = [_fetch_local(x) for x in leaves]
    for (rows, w), *leaf_parts in zip(_fetch_local(lane_written), *fetched):
      s = slots[rows]
      ok = (s != IDLE) & w
      positions = s[ok]
      written[positions] = True
      for target, (_, values) in zip(jax.tree.leaves(new_states), leaf_parts):
        target[positions] = values[ok]
  return acc, [(chunk, m, nf) for (chunk, _, _), (m, nf) in zip(results, host)]


def _program(engine, program, chunk: HostLanes, packed: bool, shared, data, rng):
  """The chunk's compiled ``(step, zeros)``: under the engine's fixed strategy, or timed once per
  shape under ``"auto"`` (``_choose``), the choice then kept with the program and recorded in
  ``engine.strategy_choices``."""
  base = ("state", program, packed, jax.tree.structure((shared, data)), _shapes((shared, rng, data)))
  cache = program_cache(engine)
  with LOCK:
    if base in cache:
      return cache[base]
    unroll = _unroll(engine, chunk.mask.shape[1]) if not packed else 1

    built = {}  # strategy -> (step, zeros): the candidates', dropped but for the chosen one

    def build(strategy: Strategy):
      if str(strategy) not in built:
        built[str(strategy)] = _compile(engine, program, shared, _abstract(data), rng, packed, unroll, strategy)
      return built[str(strategy)]

    fixed = _fixed_strategy(engine, packed)
    strategy, record = (fixed, None) if fixed is not None else _choose(engine, program, chunk, build, shared, data, rng)
    cache[base] = build(strategy)
    engine.lane_shapes.add(tuple(chunk.mask.shape[:2]))
  if record is not None:
    runner = engine._runner
    with runner._lock:
      runner.choices.append(record)
      runner._choice_programs.append(program)
  return cache[base]


def _pad(x: np.ndarray, size: int, value) -> np.ndarray:
  return np.pad(x, [(0, size - x.shape[0])] + [(0, 0)] * (x.ndim - 1), constant_values=value)


def _shapes(tree) -> tuple:
  return tuple((tuple(x.shape), str(x.dtype)) for x in jax.tree.leaves(tree))
