"""Cohort assembly: per-client examples -> fixed-shape ``[lanes, steps, batch, ...]`` parts.

Two ways in, one vectorised path:

* ``make_cohort(client_examples, ...)``: a list of per-client dicts of NumPy arrays (notebooks,
  tests);
* ``gather_cohort(dataset, clients, ...)``: clients of a ``FederatedDataset`` (the fast path:
  one row-index array for the whole cohort; the engine then reads each device's lanes with one
  fancy-index gather per feature, so no process reads lanes it does not train).

Each client's examples form a stream: its rows, shuffled afresh every epoch (or in data order with
``shuffle=False``), repeated as often as needed. Two local-work modes:

* ``local_steps=S`` (FedScale's): every client runs S steps of ``min(batch_size, n_k)``
  examples, cycling through its data; a client with fewer examples than a batch trains on all of
  them each step (the rest of the batch is masked).
* ``local_epochs=E``: client k runs ``ceil(E * n_k / batch_size)`` steps over ``E * n_k``
  examples, as ``repeat(E).batch(batch_size)`` would; only its last batch is partial (masked,
  and averaged over its real examples only).

Ragged local work is *packed*: clients are laid end to end in lanes of one length (best-fit
decreasing, longest clients first), so a heavy-tailed cohort fills its ``[lanes, steps]`` block
almost completely with one compiled shape. The lane length (a coarse bucket) and the lane count
(a bucket) are chosen together to minimise the computed example-steps. ``pack=False`` gives each client a lane
of its own (the layout fixed-steps cohorts get anyway).

``max_steps`` caps individual clients' steps (e.g. a straggler's partial work): the cap is the
work the client does, so its lane holds only those steps.
"""

import bisect
from collections.abc import Mapping, Sequence

import numpy as np

from fedjaxscale.core.buckets import bucket_size, coarse_bucket_size
from fedjaxscale.core.cohort import IDLE, Cohort, CohortPart

MAX_SLOTS = 2**28  # example slots a cohort may have (about 2.3 GiB of row indices and masks)


def make_cohort(
  client_examples: Sequence[Mapping[str, np.ndarray]],
  batch_size: int,
  *,
  local_steps: int | None = None,
  local_epochs: float | None = None,
  shuffle: bool = True,
  seed: int = 0,
  client_ids: Sequence[str] | None = None,
  weights: Sequence[float] | None = None,
  max_steps: Sequence[int] | None = None,
  pack: bool = True,
  lane_multiple: int = 1,
  min_lane_steps: int = 1,
  reuse_shapes=(),
  shapes=None,
) -> Cohort:
  """Builds a cohort from per-client example dicts.

  Args:
    client_examples: one dict per client, feature name -> array with a leading example axis;
      every client has the same features, dtypes and per-example shapes.
    batch_size: examples per local step.
    local_steps: fixed local steps per client (exclusive with ``local_epochs``).
    local_epochs: local passes over each client's data (may be fractional).
    shuffle: reshuffle each client's data every epoch; False keeps data order (reproducible tests).
    seed: seeds the shuffling.
    client_ids: names for the clients (default ``'0', '1', ...``).
    weights: per-client aggregation multipliers (default 1).
    max_steps: per-client caps on local steps (partial work).
    pack: lay several short clients end to end in one lane (default); False gives every client
      a lane of its own.
    lane_multiple: the engine pads the lane count to a multiple of this (its device count);
      packing takes it into account when it chooses the lane length.
    min_lane_steps: the shortest lane length to use.
    reuse_shapes: ``(lanes, steps)`` shapes the engine has compiled (``engine.lane_shapes``);
      one is reused when it costs at most 15% more than the best fresh shape, to save a
      compilation (see ``pack_lanes``).
    shapes: a run's fixed ``(lanes, steps)`` shapes (``plan_shapes``): the cohort takes the
      cheapest one it fits, so a run compiles only those; None (default) chooses freely.

  Returns:
    A ``Cohort``.

  Example::

    cohort = make_cohort([{'x': x0, 'y': y0}, {'x': x1, 'y': y1}], batch_size=10, local_epochs=1,
                         shuffle=False)
  """
  if not client_examples:
    raise ValueError("make_cohort needs at least one client")
  names = sorted(client_examples[0])
  if not names:
    raise ValueError("client 0 has no features")
  sizes = []
  for k, ex in enumerate(client_examples):
    if sorted(ex) != names:
      raise ValueError(f"client {k} has features {sorted(ex)}, client 0 has {names}")
    lengths = {name: len(ex[name]) for name in names}
    if len(set(lengths.values())) != 1:
      raise ValueError(f"client {k}: features have unequal lengths {lengths}")
    for name in names:
      ref, x = np.asarray(client_examples[0][name]), np.asarray(ex[name])
      if x.shape[1:] != ref.shape[1:] or x.dtype != ref.dtype:
        raise ValueError(
          f"client {k}: feature {name!r} is {x.dtype}{list(x.shape[1:])} per example, "
          f"client 0's is {ref.dtype}{list(ref.shape[1:])}"
        )
    sizes.append(lengths[names[0]])
  features = {name: np.concatenate([np.asarray(ex[name]) for ex in client_examples]) for name in names}
  sizes = np.asarray(sizes, np.int64)
  starts = np.concatenate([[0], np.cumsum(sizes)[:-1]]).astype(np.int64)
  if client_ids is None:
    client_ids = [str(k) for k in range(len(client_examples))]
  return _assemble(
    features,
    starts,
    sizes,
    np.asarray(client_ids),
    batch_size,
    local_steps=local_steps,
    local_epochs=local_epochs,
    shuffle=shuffle,
    seed=seed,
    weights=weights,
    max_steps=max_steps,
    pack=pack,
    lane_multiple=lane_multiple,
    min_lane_steps=min_lane_steps,
    reuse_shapes=reuse_shapes,
    shapes=shapes,
  )


def gather_cohort(
  dataset,
  clients: Sequence[str] | Sequence[int] | np.ndarray,
  batch_size: int,
  *,
  local_steps: int | None = None,
  local_epochs: float | None = None,
  shuffle: bool = True,
  seed: int = 0,
  weights: Sequence[float] | None = None,
  max_steps: Sequence[int] | None = None,
  pack: bool = True,
  lane_multiple: int = 1,
  min_lane_steps: int = 1,
  reuse_shapes=(),
  shapes=None,
) -> Cohort:
  """Builds a cohort from clients of a ``FederatedDataset``, reading only their rows.

  Args:
    dataset: a ``FederatedDataset``.
    clients: client ids (strings) or integer indices into ``dataset.client_ids``.
    batch_size, local_steps, local_epochs, shuffle, seed, weights, max_steps, pack, lane_multiple,
      min_lane_steps, reuse_shapes, shapes: as ``make_cohort``.

  Returns:
    A ``Cohort`` whose ``client_ids`` are the dataset's ids of ``clients``.
  """
  clients = np.asarray(clients)
  if clients.ndim != 1 or len(clients) == 0:
    raise ValueError(f"gather_cohort needs a non-empty 1-D list of clients, got shape {clients.shape}")
  if clients.dtype.kind in "iu":
    index = clients.astype(np.int64)
    bad = index[(index < 0) | (index >= dataset.num_clients)]
    if len(bad):
      raise ValueError(
        f"client indices {bad[:5].tolist()} are outside the dataset's {dataset.num_clients} clients ({dataset.path})"
      )
  else:
    index = np.asarray(dataset.client_index(clients), np.int64)
  offsets = np.asarray(dataset.offsets)
  starts = offsets[index]
  sizes = offsets[index + 1] - starts
  return _assemble(
    dataset.features,
    starts,
    sizes,
    np.asarray(dataset.client_ids)[index],
    batch_size,
    local_steps=local_steps,
    local_epochs=local_epochs,
    shuffle=shuffle,
    seed=seed,
    weights=weights,
    max_steps=max_steps,
    pack=pack,
    lane_multiple=lane_multiple,
    min_lane_steps=min_lane_steps,
    reuse_shapes=reuse_shapes,
    shapes=shapes,
  )


def _assemble(
  features,
  starts,
  sizes,
  client_ids,
  batch_size,
  *,
  local_steps,
  local_epochs,
  shuffle,
  seed,
  weights,
  max_steps,
  pack,
  lane_multiple,
  min_lane_steps,
  reuse_shapes,
  shapes,
) -> Cohort:
  n = len(sizes)
  if batch_size is None or int(batch_size) < 1:
    raise ValueError(f"batch_size must be >= 1, got {batch_size}")
  if (local_steps is None) == (local_epochs is None):
    raise ValueError("give exactly one of local_steps and local_epochs")
  if local_steps is not None and int(local_steps) < 1:
    raise ValueError(f"local_steps must be >= 1, got {local_steps}")
  if local_epochs is not None and not local_epochs > 0:
    raise ValueError(f"local_epochs must be > 0, got {local_epochs}")
  if lane_multiple < 1:
    raise ValueError(f"lane_multiple must be >= 1, got {lane_multiple}")
  empty = np.flatnonzero(sizes <= 0)
  if len(empty):
    raise ValueError(f"clients {client_ids[empty[:5]].tolist()} have no examples; a cohort needs at least one each")
  batch_size = int(batch_size)
  weights = np.ones(n, np.float32) if weights is None else np.asarray(weights, np.float32)
  if weights.shape != (n,):
    raise ValueError(f"weights has shape {weights.shape}, expected ({n},)")

  if local_steps is not None:
    steps = np.full(n, int(local_steps), np.int64)
    width = np.minimum(batch_size, sizes)  # real slots per step
    total = steps * width
  else:
    total = np.ceil(float(local_epochs) * sizes - 1e-9).astype(np.int64)
    steps = -(-total // batch_size)
    width = np.full(n, batch_size, np.int64)
  if max_steps is not None:
    max_steps = np.asarray(max_steps, np.int64)
    if max_steps.shape != (n,) or (max_steps < 0).any():
      raise ValueError(f"max_steps must be {n} non-negative integers, got shape {max_steps.shape}")
    steps = np.minimum(steps, max_steps)
    total = np.minimum(total, steps * width)

  lane, offset, num_lanes, lane_steps = pack_lanes(
    np.maximum(steps, 1),
    pack=pack,
    lane_multiple=lane_multiple,
    min_lane_steps=min_lane_steps,
    reuse_shapes=reuse_shapes,
    shapes=shapes,
  )
  slots = num_lanes * lane_steps * batch_size
  if slots > MAX_SLOTS:
    raise ValueError(
      f"this cohort would need {num_lanes:,} lanes x {lane_steps:,} steps x batch {batch_size} = {slots:,} example "
      f"slots (about {slots * 9 / 2**30:.1f} GiB of indices and masks) for {int(steps.sum() * batch_size):,} real "
      f"ones"
      + (
        "; pack=True lays short clients end to end instead"
        if not pack
        else "; use fewer clients, fewer local steps, or cap the largest clients"
      )
    )
  part = _part(
    features,
    starts,
    sizes,
    width,
    total,
    steps,
    lane,
    offset,
    num_lanes,
    lane_steps,
    batch_size,
    shuffle,
    np.random.default_rng(seed),
  )
  return Cohort((part,), client_ids, sizes.astype(np.float32), weights)


def pack_lanes(
  steps: np.ndarray,
  *,
  pack: bool = True,
  lane_multiple: int = 1,
  min_lane_steps: int = 1,
  reuse_shapes=(),
  reuse_tolerance: float = 0.15,
  shapes=None,
):
  """Places clients' step runs in lanes.

  Args:
    steps: steps each client occupies (>= 1).
    pack: share lanes between clients; else one lane each.
    lane_multiple: lane counts are rounded up to bucket sizes that are multiples of this.
    min_lane_steps: lanes are at least this long.
    reuse_shapes: ``(lanes, steps)`` shapes already compiled (``Engine.lane_shapes``); one of them
      is used, its spare lanes left idle, when it costs at most ``1 + reuse_tolerance`` times the
      best fresh shape: a little padding is cheaper than a compilation.
    reuse_tolerance: see ``reuse_shapes``.
    shapes: a fixed set of ``(lanes, steps)`` shapes (``plan_shapes``): the cheapest one the
      clients fit is used (``reuse_shapes`` is then ignored); only when none fits (more clients
      or longer ones than the set was planned for) is a fresh shape chosen as without it.

  Returns:
    ``(lane, offset, num_lanes, lane_steps)``: each client's lane and first step, the number of
    lanes (already a bucket size when a compiled shape is reused) and their length. Fresh lengths
    come from the coarse grid (1, 2, 3, 4, 6, 8, 12, ...): of the two smallest that fit the
    longest client, the one with the least (bucketed lanes) x (length).
  """
  longest = int(steps.max())
  need = max(longest, min_lane_steps)
  n = len(steps)
  if shapes is not None:
    placed = _fixed_shape(steps, need, pack, lane_multiple, shapes)
    if placed is not None:
      return placed
  reuse_shapes = [(int(r), int(l)) for r, l in reuse_shapes if l >= need and r % lane_multiple == 0]
  if not pack or (int(steps.min()) == longest and min_lane_steps <= longest):
    # A lane each; for equal work (fixed local steps) exactly that long.
    length = longest if int(steps.min()) == longest and min_lane_steps <= longest else coarse_bucket_size(need)
    fresh = [(bucket_size(n, lane_multiple) * length, n, length)]
    _, lanes, length = _choose(
      fresh, [(r * l, r, l) for r, l in reuse_shapes if r >= n and l >= length], reuse_tolerance
    )
    return np.arange(n), np.zeros(n, np.int64), lanes, length
  order = np.argsort(-steps, kind="stable")
  packings = {}

  def lanes_needed(length):
    if length not in packings:
      packings[length] = _best_fit_decreasing(steps, order, length)
    return packings[length][2]

  shortest = coarse_bucket_size(need)
  fresh = [
    (bucket_size(lanes_needed(l), lane_multiple) * l, lanes_needed(l), l)
    for l in (shortest, coarse_bucket_size(shortest + 1))
  ]
  budget = min(fresh)[0] * (1 + reuse_tolerance)
  reuse = [(r * l, r, l) for r, l in reuse_shapes if r * l <= budget and lanes_needed(l) <= r]
  _, lanes, length = _choose(fresh, reuse, reuse_tolerance)
  lane, offset, _ = packings[length]
  return lane, offset, lanes, length


def _fixed_shape(steps, need, pack, lane_multiple, shapes):
  """The cheapest of ``shapes`` that holds the clients (None if none does)."""
  n = len(steps)
  equal = int(steps.min()) == int(steps.max())
  order = np.argsort(-steps, kind="stable")
  packings = {}
  for _, lanes, length in sorted((int(r) * int(l), int(r), int(l)) for r, l in shapes):
    if length < need or lanes % lane_multiple:
      continue
    if not pack or equal:
      if n <= lanes:  # a lane each, fixed steps exactly that long or shorter ones padded
        return np.arange(n), np.zeros(n, np.int64), lanes, length
      continue
    if length not in packings:
      packings[length] = _best_fit_decreasing(steps, order, length)
    lane, offset, used = packings[length]
    if used <= lanes:
      return lane, offset, lanes, length
  return None


def _choose(fresh, reuse, tolerance):
  """The cheapest fresh ``(cost, lanes, length)``, unless a compiled shape costs at most
  ``1 + tolerance`` times as much: then the cheapest such compiled shape."""
  best = min(fresh)
  reusable = [c for c in reuse if c[0] <= best[0] * (1 + tolerance)]
  return min(reusable) if reusable else best


def _best_fit_decreasing(steps, order, length):
  """Longest first, each into the fullest lane it still fits (a new lane when none does)."""
  lane = np.empty(len(steps), np.int64)
  offset = np.empty(len(steps), np.int64)
  free, ids = [], []  # lanes' free steps, kept sorted, and the lane id at each place
  num_lanes = 0
  for k in order.tolist():
    need = int(steps[k])
    i = bisect.bisect_left(free, need)
    if i == len(free):
      lane_id, room = num_lanes, length
      num_lanes += 1
    else:
      lane_id, room = ids.pop(i), free.pop(i)
    lane[k], offset[k] = lane_id, length - room
    room -= need
    if room:
      j = bisect.bisect_left(free, room)
      free.insert(j, room)
      ids.insert(j, lane_id)
  return lane, offset, num_lanes


def _part(
  features, starts, sizes, width, total, steps, lane, offset, num_lanes, lane_steps, batch_size, shuffle, rng
) -> CohortPart:
  """Builds the part's row indices ``[lanes, steps, batch]`` (the engine gathers them).

  Every client's example stream is its rows in order (or, with ``shuffle``, a fresh permutation
  of them each epoch); local step s of a client reads positions ``s * width .. s * width + width``
  of it. When each client has a lane of its own from the lane's first step (no packing: fixed
  local steps, or ``pack=False``) the arrays are built in the ``[lanes, steps, batch]`` layout
  directly; otherwise per (client, local step) and scattered into the lanes. Both give the same
  arrays.
  """
  n_clients = len(sizes)
  slots = np.maximum(steps, 1)
  own_lanes = not offset.any() and np.array_equal(lane, np.arange(n_clients))
  j = np.arange(batch_size, dtype=np.int64)
  if own_lanes:  # [clients, lane_steps, batch]
    client = None  # every client's arrays index as they are
    local = np.arange(lane_steps, dtype=np.int64)[None, :, None]
    per = (slice(None), None, None)
    j = j[None, None, :]
  else:  # [sum of slots, batch]: one entry per (client, local step)
    client = np.repeat(np.arange(n_clients), slots)
    local = (np.arange(len(client)) - np.repeat(np.cumsum(slots) - slots, slots))[:, None]
    per = (slice(None), None)
    j = j[None, :]

  def of_client(x):  # a per-client array broadcast against ``local``
    return (x if client is None else x[client])[per]

  w = of_client(width)
  pos = local * w + j  # position in the client's example stream
  real = (pos < of_client(total)) & (local < of_client(steps))
  if not (width == batch_size).all():  # (local_epochs: every step is a whole batch wide)
    real &= j < w
  pos = np.where(real, pos, 0)
  # One epoch at most (local_epochs <= 1, or few local steps): the position is the stream's own.
  single_epoch = bool((total <= sizes).all())
  if single_epoch:
    epoch, within = 0, pos
  else:
    epoch, within = np.divmod(pos, of_client(sizes))
  if shuffle:
    epochs = np.maximum(-(-total // sizes), 1)
    seg_len = np.repeat(sizes, epochs)
    seg_start = np.zeros(len(seg_len), np.int64)
    np.cumsum(seg_len[:-1], out=seg_start[1:])
    local_perm = _segment_permutations(seg_len, seg_start, rng)
    if single_epoch:  # a segment per client
      seg = of_client(np.arange(n_clients))
    else:
      client_seg0 = np.zeros(n_clients, np.int64)
      np.cumsum(epochs[:-1], out=client_seg0[1:])
      seg = of_client(client_seg0) + np.minimum(epoch, of_client(epochs) - 1)
    within = local_perm[seg_start[seg] + within]
  # Idle slots (masked) read the cohort's first example, the same row whichever source it came from.
  rows = np.full((num_lanes, lane_steps, batch_size), starts[0], np.int64)
  mask = np.zeros((num_lanes, lane_steps, batch_size), bool)
  owner = np.full((num_lanes, lane_steps), IDLE, np.int32)
  if own_lanes:
    used = local < slots[:, None, None]  # a client's slots; the rest of its lane is idle
    rows[:n_clients] = np.where(used, starts[:, None, None] + within, starts[0])
    mask[:n_clients] = real
    owner[:n_clients] = np.where(used[:, :, 0], np.arange(n_clients)[:, None], IDLE)
  else:
    where = (lane[client], offset[client] + local[:, 0])
    rows[where] = starts[client][:, None] + within
    mask[where] = real
    owner[where] = client
  part = CohortPart(rows=rows, features=features, mask=mask, owner=owner)
  return part.known_packed(False) if own_lanes else part


def _segment_permutations(seg_len: np.ndarray, seg_start: np.ndarray, rng) -> np.ndarray:
  """One independent uniform permutation of ``0..len-1`` per segment, laid end to end.

  Each entry draws a uniform (one ``rng.random`` draw for all, in order); a segment's
  permutation is the order of its entries' uniforms. Sorting ``segment + uniform`` does this in
  one float argsort; when the segments are of similar length a row-wise argsort of the uniforms
  in ``[segments, longest]`` (padded with 2.0, which sorts last) gives the same order faster:
  rows sort independently.
  """
  total = int(seg_len.sum())
  u = rng.random(total)
  longest = int(seg_len.max())
  if int(seg_len.min()) == longest:  # equal segments: the rows are the segments
    return np.argsort(u.reshape(len(seg_len), longest), axis=1).reshape(-1)
  seg_id = np.repeat(np.arange(len(seg_len)), seg_len)
  if len(seg_len) * longest > 2 * total:
    return np.argsort(seg_id + u) - seg_start[seg_id]
  padded = np.full((len(seg_len), longest), 2.0)
  column = np.arange(total) - seg_start[seg_id]
  padded[seg_id, column] = u
  order = np.argsort(padded, axis=1)
  return order[seg_id, column]


def padding_report(cohort: Cohort, lane_multiple: int = 1) -> dict[str, float]:
  """Real and computed example-steps and their ratio, for logs and benchmarks."""
  real = cohort.real_example_steps
  computed = cohort.computed_example_steps(lane_multiple)
  return {
    "real_example_steps": real,
    "computed_example_steps": computed,
    "padding_efficiency": real / computed if computed else 1.0,
    "lanes": sum(p.num_lanes for p in cohort.parts),
    "lane_steps": max(p.num_steps for p in cohort.parts),
  }


def steps_for(
  sizes: np.ndarray, batch_size: int, *, local_steps: int | None = None, local_epochs: float | None = None
) -> np.ndarray:
  """Local steps each client runs (the scheduler's latency model uses the same count)."""
  sizes = np.asarray(sizes, np.int64)
  if local_steps is not None:
    return np.full(len(sizes), int(local_steps), np.int64)
  return -(-np.ceil(float(local_epochs) * sizes - 1e-9).astype(np.int64) // batch_size)
