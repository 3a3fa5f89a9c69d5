"""Our own trace file format: one compressed ``.npz`` (spec: traces/README.md)."""

from __future__ import annotations

import json
import os
import zipfile

import numpy as np

from fedjaxscale.systems.availability import Availability
from fedjaxscale.systems.errors import TraceError
from fedjaxscale.systems.traces import SystemTraces

FORMAT = "fedjaxscale.traces"
VERSION = 1
REQUIRED = ("compute_ms_per_sample", "down_kbps", "up_kbps", "period_s", "offsets", "on_start_s", "on_duration_s")


def save_traces(path: str | os.PathLike, traces: SystemTraces, metadata: dict | None = None) -> None:
  """Writes ``traces`` to ``path`` (compressed ``.npz``).

  Interval times are written as int32 seconds when they are whole seconds
  below 2**31 (the generator's output), else as float64. A population view
  (``availability.rows`` set) is written expanded, one entry per member.

  Args:
    path: destination, conventionally ``*.npz``.
    traces: what to write.
    metadata: JSON-serialisable provenance (e.g. generator parameters).
  """
  av = traces.availability
  if av.rows is not None:
    counts = np.diff(av.offsets)[av.rows]
    pick = np.repeat(av.offsets[:-1][av.rows] - np.cumsum(counts) + counts, counts) + np.arange(counts.sum())
    starts, ends = av.starts[pick], av.ends[pick]
    offsets = np.concatenate([[0], np.cumsum(counts)])
    period = av.period[av.rows]
  else:
    starts, ends, offsets, period = av.starts, av.ends, av.offsets, av.period
  starts64 = starts.astype(np.float64)
  durations64 = ends.astype(np.float64) - starts64
  whole = (
    np.all(starts64 == np.round(starts64))
    and np.all(durations64 == np.round(durations64))
    and (starts64.size == 0 or ends.max() < 2**31)
  )
  dtype = np.int32 if whole else np.float64
  period_s = period[0] if np.all(period == period[0]) else period
  np.savez_compressed(
    path,
    format=np.array(FORMAT),
    version=np.array(VERSION),
    compute_ms_per_sample=traces.compute_ms.astype(np.float32),
    down_kbps=traces.down_kbps.astype(np.float32),
    up_kbps=traces.up_kbps.astype(np.float32),
    period_s=np.asarray(period_s, np.float64),
    offsets=np.asarray(offsets, np.int64),
    on_start_s=starts64.astype(dtype),
    on_duration_s=durations64.astype(dtype),
    metadata=np.array(json.dumps(metadata or {}, allow_nan=False)),
  )


def load_traces(path: str | os.PathLike) -> SystemTraces:
  """Reads a trace file written by `save_traces` (or by hand, to the spec).

  Raises:
    TraceError: unreadable file, missing field, wrong format tag, or bad
      values; the message names the file and the client.
  """
  source = os.fspath(path)
  try:
    with np.load(source, allow_pickle=False) as f:
      data = {k: f[k] for k in f.files}
  except (OSError, ValueError, zipfile.BadZipFile) as e:
    raise TraceError(source, None, f"cannot read trace file: {e}") from e
  if "format" in data and str(data["format"]) != FORMAT:
    raise TraceError(source, None, f"format is {str(data['format'])!r}, expected {FORMAT!r}")
  for key in REQUIRED:
    if key not in data:
      raise TraceError(source, None, f"missing field {key!r}")
  version = int(data.get("version", VERSION))
  if version > VERSION:
    raise TraceError(source, None, f"format version {version} is newer than this reader ({VERSION})")
  starts = np.asarray(data["on_start_s"])
  durations = np.asarray(data["on_duration_s"])
  if starts.shape != durations.shape:
    raise TraceError(source, None, "on_start_s and on_duration_s differ in length")
  if (durations < 0).any():
    k = int(np.flatnonzero(durations < 0)[0])
    offsets = np.asarray(data["offsets"])
    client = int(np.searchsorted(offsets, k, side="right") - 1)
    raise TraceError(source, client, f"negative on_duration_s {durations[k]} at interval {k}")
  if starts.dtype.kind in "iu":
    ends = starts.astype(np.int64) + durations
  else:
    ends = starts.astype(np.float64) + durations
    if starts.dtype == np.float32:
      ends = ends.astype(np.float32)
  availability = Availability.from_intervals(data["offsets"], starts, ends, data["period_s"], source=source)
  return SystemTraces.create(
    data["compute_ms_per_sample"], data["down_kbps"], data["up_kbps"], availability, source=source
  )


def load_metadata(path: str | os.PathLike) -> dict:
  """The provenance dict stored by `save_traces` (empty if none)."""
  with np.load(os.fspath(path), allow_pickle=False) as f:
    return json.loads(str(f["metadata"])) if "metadata" in f.files else {}
