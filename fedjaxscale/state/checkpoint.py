"""Checkpoints of the client-state store: versioned chunks, copied only when they changed.

``save_chunks(store, directory, step)`` writes every chunk changed since the last save as a new
file ``chunk-{c}.{step}.bin`` (written to a temporary name, synced, then renamed: a file either is
complete or is not there) and returns the store's *index*: the row of every client, the version of
every chunk and the layout's fingerprint. The index is small (4 bytes a client) and goes into the
run's orbax checkpoint with the server state, so the checkpoint is one atomic thing: an index
names only chunk files that were complete before it was written. Older versions stay until no
kept checkpoint names them (``collect``). A failed write (a full disk) raises ``StoreError``
and leaves every earlier checkpoint and the store's dirty marks as they were.

``restore_chunks(store, index, directory)`` refills an empty store from an index.
"""

import errno
import json
import os
import pathlib

import numpy as np

from fedjaxscale.state.store import ClientStateStore, StoreError


def chunk_file(directory: pathlib.Path, c: int, version: int) -> pathlib.Path:
  return directory / f"chunk-{c:06d}.{version:09d}.bin"


def _write_atomic(path: pathlib.Path, data: np.ndarray) -> None:
  tmp = path.with_name(path.name + ".tmp")
  try:
    with open(tmp, "wb") as f:
      f.write(memoryview(np.ascontiguousarray(data)).cast("B"))
      f.flush()
      os.fsync(f.fileno())
    os.replace(tmp, path)
  except OSError as e:
    tmp.unlink(missing_ok=True)
    reason = "the disk is full" if e.errno == errno.ENOSPC else e.strerror
    raise StoreError(
      f"writing state checkpoint chunk {path} failed: {reason}; earlier checkpoints are intact "
      "(continue with --resume once there is room)"
    ) from None


def save_chunks(
  store: ClientStateStore, directory: str | pathlib.Path, step: int, previous: dict | None, write: bool = True
) -> dict:
  """Writes the chunks changed since ``previous`` (the last index saved, or None) and returns the new index.

  ``write=False`` returns the same index without writing (the processes of a multi-process run
  other than the lead, which writes the shared chunk files).

  Returns:
    ``{"row_of": int array [N], "versions": int64 [chunks], "num_rows": int, "chunk_rows": int,
    "fingerprint": JSON string}``.
  """
  directory = pathlib.Path(directory)
  directory.mkdir(parents=True, exist_ok=True)
  store.flush()
  versions = np.full(len(store.chunks), -1, np.int64)
  if previous is not None:
    old = np.asarray(previous["versions"])
    versions[: len(old)] = old
  todo = sorted(c for c in range(len(store.chunks)) if c in store.dirty or versions[c] < 0)
  for c in todo:
    if write:
      _write_atomic(chunk_file(directory, c, step), store.chunks[c])
    versions[c] = step
  store.dirty.clear()  # only once every changed chunk is safely written
  return {
    "row_of": store.row_of.copy(),
    "versions": versions,
    "num_rows": int(store.num_rows),
    "chunk_rows": int(store.chunk_rows),
    "num_clients": int(store.num_clients),
    "fingerprint": json.dumps(store.layout.fingerprint(), sort_keys=True),
  }


def check_index(store: ClientStateStore, index: dict, where: str) -> None:
  """Raises ``StoreError`` when a checkpointed store does not belong to this run's config."""
  fingerprint = index["fingerprint"]
  fingerprint = json.loads(fingerprint) if isinstance(fingerprint, str) else fingerprint
  mismatch = store.layout.describe_mismatch(fingerprint)
  if mismatch:
    raise StoreError(f"{where}: the client-state store was saved by another config: {mismatch}")
  if int(index["num_clients"]) != store.num_clients:
    raise StoreError(
      f"{where}: the client-state store holds a population of {int(index['num_clients'])} clients, "
      f"this config has {store.num_clients}"
    )
  if int(index["chunk_rows"]) != store.chunk_rows:
    raise StoreError(
      f"{where}: the client-state store uses {int(index['chunk_rows'])} rows a chunk, this run {store.chunk_rows}"
    )


def restore_chunks(store: ClientStateStore, index: dict, directory: str | pathlib.Path) -> None:
  """Refills ``store`` (fresh, empty) from ``index``, reading each chunk's saved version."""
  directory = pathlib.Path(directory)
  check_index(store, index, str(directory))
  versions = np.asarray(index["versions"], np.int64)
  shape = (store.chunk_rows, store.layout.row_bytes)
  for c, version in enumerate(versions):
    path = chunk_file(directory, c, int(version))
    if not path.exists():
      raise StoreError(f"the client-state checkpoint names {path}, which is missing")
    data = np.fromfile(path, np.uint8)
    if data.size != shape[0] * shape[1]:
      raise StoreError(f"state checkpoint chunk {path} has {data.size:,} bytes, expected {shape[0] * shape[1]:,}")
    store.load_chunk(c, data.reshape(shape))
  store.row_of[:] = np.asarray(index["row_of"])
  store.num_rows = int(index["num_rows"])
  store.dirty.clear()


def collect(directory: str | pathlib.Path, kept: list[dict]) -> int:
  """Deletes chunk versions that no kept index names; returns how many files went."""
  directory = pathlib.Path(directory)
  live = {(c, int(v)) for index in kept for c, v in enumerate(np.asarray(index["versions"])) if v >= 0}
  removed = 0
  for path in directory.glob("chunk-*.bin"):
    c, v = path.name[len("chunk-") : -len(".bin")].split(".")
    if (int(c), int(v)) not in live:
      path.unlink(missing_ok=True)
      removed += 1
  for path in directory.glob("chunk-*.tmp"):
    path.unlink(missing_ok=True)
  return removed
