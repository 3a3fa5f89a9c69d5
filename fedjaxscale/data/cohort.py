"""Cohort assembly: per-client examples -> fixed-shape ``[clients, steps, batch, ...]`` parts.

Two ways in, one vectorised path:

* ``make_cohort(client_examples, ...)``: a list of per-client dicts of NumPy arrays (notebooks,
  tests);
* ``gather_cohort(dataset, clients, ...)``: clients of a ``FederatedDataset`` (the fast path:
  one row-index array for the whole cohort, then one fancy-index gather per feature).

Each client's examples form a stream: its rows, shuffled afresh every epoch (or in data order with
``shuffle=False``), repeated as often as needed. Two local-work modes:

* ``local_steps=S`` (FedScale's): every client runs S steps of ``min(batch_size, n_k)``
  examples, cycling through its data; a client with fewer examples than a batch trains on all of
  them each step (the rest of the batch is masked).
* ``local_epochs=E``: client k runs ``ceil(E * n_k / batch_size)`` steps over ``E * n_k``
  examples, as ``repeat(E).batch(batch_size)`` would; only its last batch is partial (masked,
  and averaged over its real examples only). Clients are grouped into step buckets so padding
  stays small: a part's steps are a bucket size, and the grouping minimises the computed
  example-steps (a small dynamic programme over at most ``max_parts`` groups).

``max_steps`` caps individual clients' steps (e.g. a straggler's partial work); steps past the cap
are masked, so they neither train nor count.
"""

from typing import Mapping, Sequence

import numpy as np

from fedjaxscale.core.buckets import bucket_size, bucket_sizes
from fedjaxscale.core.cohort import Cohort, CohortPart

DEFAULT_MAX_PARTS = 6


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
    max_parts: int = DEFAULT_MAX_PARTS,
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
    max_parts: at most this many step buckets in ``local_epochs`` mode.

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
        raise ValueError(f"client {k}: feature {name!r} is {x.dtype}{list(x.shape[1:])} per example, "
                         f"client 0's is {ref.dtype}{list(ref.shape[1:])}")
    sizes.append(lengths[names[0]])
  features = {name: np.concatenate([np.asarray(ex[name]) for ex in client_examples]) for name in names}
  sizes = np.asarray(sizes, np.int64)
  starts = np.concatenate([[0], np.cumsum(sizes)[:-1]]).astype(np.int64)
  if client_ids is None:
    client_ids = [str(k) for k in range(len(client_examples))]
  return _assemble(features, starts, sizes, np.asarray(client_ids), batch_size, local_steps=local_steps,
                   local_epochs=local_epochs, shuffle=shuffle, seed=seed, weights=weights, max_steps=max_steps,
                   max_parts=max_parts)


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
    max_parts: int = DEFAULT_MAX_PARTS,
) -> Cohort:
  """Builds a cohort from clients of a ``FederatedDataset``, reading only their rows.

  Args:
    dataset: a ``FederatedDataset``.
    clients: client ids (strings) or integer indices into ``dataset.client_ids``.
    batch_size, local_steps, local_epochs, shuffle, seed, weights, max_steps, max_parts: as
      ``make_cohort``.

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
      raise ValueError(f"client indices {bad[:5].tolist()} are outside the dataset's {dataset.num_clients} clients "
                       f"({dataset.path})")
  else:
    index = np.asarray(dataset.client_index(clients), np.int64)
  offsets = np.asarray(dataset.offsets)
  starts = offsets[index]
  sizes = offsets[index + 1] - starts
  return _assemble(dataset.features, starts, sizes, np.asarray(dataset.client_ids)[index], batch_size,
                   local_steps=local_steps, local_epochs=local_epochs, shuffle=shuffle, seed=seed, weights=weights,
                   max_steps=max_steps, max_parts=max_parts)


def _assemble(features, starts, sizes, client_ids, batch_size, *, local_steps, local_epochs, shuffle, seed, weights,
              max_steps, max_parts) -> Cohort:
  n = len(sizes)
  if batch_size is None or int(batch_size) < 1:
    raise ValueError(f"batch_size must be >= 1, got {batch_size}")
  if (local_steps is None) == (local_epochs is None):
    raise ValueError("give exactly one of local_steps and local_epochs")
  if local_steps is not None and int(local_steps) < 1:
    raise ValueError(f"local_steps must be >= 1, got {local_steps}")
  if local_epochs is not None and not local_epochs > 0:
    raise ValueError(f"local_epochs must be > 0, got {local_epochs}")
  if max_parts < 1:
    raise ValueError(f"max_parts must be >= 1, got {max_parts}")
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

  groups = [np.arange(n)] if local_steps is not None else _step_groups(steps, batch_size, max_parts)
  rng = np.random.default_rng(seed)
  parts = []
  for members in groups:
    num_steps = int(local_steps) if local_steps is not None else bucket_size(int(steps[members].max()))
    parts.append(_part(features, starts[members], sizes[members], width[members], total[members], members,
                       num_steps, batch_size, shuffle, rng, weights[members]))
  return Cohort(tuple(parts), client_ids)


def _step_groups(steps: np.ndarray, batch_size: int, max_parts: int) -> list[np.ndarray]:
  """Groups clients by step bucket, merging adjacent buckets to at most ``max_parts`` groups.

  The cost of a group is what the engine computes for it: (clients, padded to their bucket) x
  (its largest step bucket); the grouping of sorted buckets that minimises the total is found
  by dynamic programming over the distinct bucket sizes (a few dozen at most).
  """
  buckets = bucket_sizes(np.maximum(steps, 1))
  values, inverse, counts = np.unique(buckets, return_inverse=True, return_counts=True)
  m = len(values)
  cum = np.concatenate([[0], np.cumsum(counts)])
  parts = min(max_parts, m)
  inf = float("inf")
  # best[p][j]: least cost covering bucket values [0, j) with p groups; cut[p][j]: its last cut.
  best = [[inf] * (m + 1) for _ in range(parts + 1)]
  cut = [[0] * (m + 1) for _ in range(parts + 1)]
  best[0][0] = 0.0
  for p in range(1, parts + 1):
    for j in range(1, m + 1):
      for i in range(p - 1, j):
        if best[p - 1][i] == inf:
          continue
        cost = best[p - 1][i] + bucket_size(int(cum[j] - cum[i])) * int(values[j - 1]) * batch_size
        if cost < best[p][j]:
          best[p][j], cut[p][j] = cost, i
  p = min(range(1, parts + 1), key=lambda q: best[q][m])
  bounds, j = [], m
  while p > 0:
    i = cut[p][j]
    bounds.append((i, j))
    j, p = i, p - 1
  order = np.argsort(inverse, kind="stable")
  return [order[cum[i]:cum[j]] for i, j in reversed(bounds)]


def _part(features, starts, sizes, width, total, members, num_steps, batch_size, shuffle, rng, weights) -> CohortPart:
  """Builds one part's row indices ``[clients, steps, batch]`` and gathers them."""
  c = len(members)
  s = np.arange(num_steps, dtype=np.int64)[None, :, None]
  j = np.arange(batch_size, dtype=np.int64)[None, None, :]
  w = width[:, None, None]
  pos = s * w + j  # position in the client's example stream
  mask = (j < w) & (pos < total[:, None, None])
  pos = np.where(mask, pos, 0)
  n = sizes[:, None, None]
  epoch, within = pos // n, pos % n
  if shuffle:
    # One independent permutation per (client, epoch): sort random keys within each segment.
    epochs = np.maximum(-(-total // sizes), 1)
    seg_len = np.repeat(sizes, epochs)
    seg_start = np.concatenate([[0], np.cumsum(seg_len)[:-1]])
    seg_id = np.repeat(np.arange(len(seg_len)), seg_len)
    order = np.lexsort((rng.random(len(seg_id)), seg_id))
    local = order - seg_start[seg_id]
    client_seg0 = np.concatenate([[0], np.cumsum(epochs)[:-1]])
    seg = client_seg0[:, None, None] + np.minimum(epoch, epochs[:, None, None] - 1)
    within = local[seg_start[seg] + within]
  rows = starts[:, None, None] + within
  batch = {name: np.asarray(x[rows.reshape(-1)]).reshape(rows.shape + x.shape[1:]) for name, x in features.items()}
  return CohortPart(batch=batch, mask=mask, num_examples=sizes.astype(np.float32), weight=weights,
                    position=members.astype(np.int32))


def padding_report(cohort: Cohort, client_multiple: int = 1) -> dict[str, float]:
  """Real and computed example-steps and their ratio, for logs and benchmarks."""
  real = cohort.real_example_steps
  computed = cohort.computed_example_steps(client_multiple)
  return {"real_example_steps": real, "computed_example_steps": computed,
          "padding_efficiency": real / computed if computed else 1.0, "parts": len(cohort.parts)}


def steps_for(sizes: np.ndarray, batch_size: int, *, local_steps: int | None = None,
              local_epochs: float | None = None) -> np.ndarray:
  """Local steps each client runs (the scheduler's latency model uses the same count)."""
  sizes = np.asarray(sizes, np.int64)
  if local_steps is not None:
    return np.full(len(sizes), int(local_steps), np.int64)
  return -(-np.ceil(float(local_epochs) * sizes - 1e-9).astype(np.int64) // batch_size)

