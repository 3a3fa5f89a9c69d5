"""Loaders for FedScale's trace pickles.

FedScale (Lai et al., "FedScale: Benchmarking Model and System Performance of
Federated Learning at Scale", ICML 2022, arXiv:2105.11367) ships two files:

* ``client_device_capacity``: ``{client_id: {'computation': ms_per_sample,
  'communication': kbit_per_s}}``; one bandwidth serves both directions
  (newer files may add ``'dl_kbps'`` / ``'ul_kbps'``, used when present).
* ``client_behave_trace``: ``{client_id: {'active': [...], 'inactive': [...],
  'finish_time': s, ...}}``: on-interval k is ``[active[k], inactive[k]]``
  (closed), times in seconds, wrapped modulo ``finish_time``; other keys
  (``'duration'``, ``'model'``) are ignored.

FedScale numbers its clients from 1 and maps client ``c`` to
``client_profiles.get(c % len(profiles), {'computation': 1.0,
'communication': 1.0})`` (a dict lookup by key, with that fallback) and to
``list(behave_trace)[c % len(behave_trace)]`` (by position). The
``'fedscale'`` mapping reproduces both for population member ``i`` (FedScale
client ``i + 1``); ``'modulo'`` maps member ``i`` to the entry at position
``i % len`` of each file; ``'identity'`` to position ``i``.
"""

from __future__ import annotations

import math
import os
import pickle

import numpy as np

from fedjaxscale.systems.availability import Availability
from fedjaxscale.systems.errors import TraceError
from fedjaxscale.systems.traces import SystemTraces, population_rows

# What FedScale uses for a client id missing from the capacity file.
FEDSCALE_FALLBACK_CAPACITY = {"computation": 1.0, "communication": 1.0}


def _load_pickle(path) -> dict:
  source = os.fspath(path)
  try:
    with open(source, "rb") as f:
      table = pickle.load(f)
  except (OSError, pickle.UnpicklingError, EOFError, AttributeError, ImportError) as e:
    raise TraceError(source, None, f"cannot read pickle: {e}") from e
  if not isinstance(table, dict):
    raise TraceError(source, None, f"expected a dict of clients, got {type(table).__name__}")
  if not table:
    raise TraceError(source, None, "empty trace: no clients")
  return table


def read_fedscale_capacity(path):
  """Reads ``client_device_capacity``.

  Returns:
    ``(keys, compute_ms, down_kbps, up_kbps)``: the file's client ids in file
    order and float64 arrays aligned with them.

  Raises:
    TraceError: unreadable file, empty table, missing key, or a speed or
      bandwidth that is NaN or not > 0 (names the file and the client id).
  """
  source = os.fspath(path)
  table = _load_pickle(source)
  keys = list(table)
  out = np.empty((3, len(keys)))
  for i, key in enumerate(keys):
    entry = table[key]
    if not isinstance(entry, dict):
      raise TraceError(source, key, "entry is not a dict")
    for field in ("computation", "communication"):
      if field not in entry:
        raise TraceError(source, key, f"missing key {field!r}")
    bw = entry["communication"]
    values = (entry["computation"], entry.get("dl_kbps", bw), entry.get("ul_kbps", bw))
    for row, (field, v) in enumerate(zip(("computation", "download bandwidth", "upload bandwidth"), values)):
      try:
        v = float(v)
      except (TypeError, ValueError):
        raise TraceError(source, key, f"{field} is not a number: {v!r}") from None
      if not math.isfinite(v) or v <= 0:
        got = "NaN" if math.isnan(v) else v
        raise TraceError(source, key, f"{field} must be finite and > 0, got {got}")
      out[row, i] = v
  return keys, out[0], out[1], out[2]


def read_fedscale_behavior(path):
  """Reads ``client_behave_trace`` into an `Availability` (one row per entry,
  in file order; period = each client's ``finish_time``).

  Intervals are clipped to ``[0, finish_time]``, the only part FedScale ever
  looks at; an interval starting at or after ``finish_time`` is dropped.

  Returns:
    ``(keys, availability)``.

  Raises:
    TraceError: unreadable file, empty table, missing key, ``active`` and
      ``inactive`` of different lengths, NaN or negative times, unsorted or
      overlapping intervals, ``finish_time`` not > 0.
  """
  source = os.fspath(path)
  table = _load_pickle(source)
  keys = list(table)
  starts, ends, counts, period = [], [], [], np.empty(len(keys))
  for i, key in enumerate(keys):
    entry = table[key]
    if not isinstance(entry, dict):
      raise TraceError(source, key, "entry is not a dict")
    for field in ("active", "inactive", "finish_time"):
      if field not in entry:
        raise TraceError(source, key, f"missing key {field!r}")
    try:
      a = np.asarray(entry["active"], np.float64).reshape(-1)
      b = np.asarray(entry["inactive"], np.float64).reshape(-1)
      fin = float(entry["finish_time"])
    except (TypeError, ValueError) as e:
      raise TraceError(source, key, f"times are not numbers: {e}") from None
    if a.size != b.size:
      raise TraceError(source, key, f"'active' has {a.size} entries, 'inactive' has {b.size}")
    if not math.isfinite(fin) or fin <= 0:
      raise TraceError(source, key, f"finish_time must be > 0, got {fin}")
    if not (np.isfinite(a).all() and np.isfinite(b).all()):
      raise TraceError(source, key, "an interval time is NaN or infinite")
    keep = a < fin
    a, b = a[keep], np.minimum(b[keep], fin)
    starts.append(a)
    ends.append(b)
    counts.append(a.size)
    period[i] = fin
  offsets = np.concatenate([[0], np.cumsum(counts)]).astype(np.int64)
  availability = Availability.from_intervals(
    offsets, np.concatenate(starts), np.concatenate(ends), period, source=source, client_names=keys
  )
  return keys, availability


def load_fedscale_traces(
  num_clients: int, capacity_path, behavior_path=None, mapping: str = "fedscale"
) -> SystemTraces:
  """Builds a population's `SystemTraces` from FedScale's pickles.

  Args:
    num_clients: population size (members ``0..num_clients-1``).
    capacity_path: ``client_device_capacity`` pickle.
    behavior_path: ``client_behave_trace`` pickle, or ``None``: everyone is
      always online (FedScale without ``device_avail_file``).
    mapping: ``'fedscale'``, ``'modulo'`` or ``'identity'`` (module docstring).

  Example:
    >>> traces = load_fedscale_traces(                     # doctest: +SKIP
    ...     2_800, 'client_device_capacity', 'client_behave_trace')
  """
  cap_source = os.fspath(capacity_path)
  keys, compute, down, up = read_fedscale_capacity(cap_source)
  if mapping == "fedscale":
    position = {k: i for i, k in enumerate(keys)}
    wanted = (np.arange(num_clients) + 1) % len(keys)
    rows = (
      np.array([position.get(int(k), len(keys)) for k in wanted], np.int64) if num_clients else np.zeros(0, np.int64)
    )
    fb = FEDSCALE_FALLBACK_CAPACITY
    compute = np.append(compute, fb["computation"])
    down = np.append(down, fb["communication"])
    up = np.append(up, fb["communication"])
  else:
    rows = population_rows(num_clients, len(keys), mapping)
  if behavior_path is None:
    availability = Availability.from_intervals([0, 1], [0.0], [1.0], 1.0, rows=np.zeros(num_clients, np.int64))
  else:
    b_source = os.fspath(behavior_path)
    b_keys, availability = read_fedscale_behavior(b_source)
    availability = availability.take(population_rows(num_clients, len(b_keys), mapping))
  return SystemTraces.create(compute[rows], down[rows], up[rows], availability, source=cap_source)
