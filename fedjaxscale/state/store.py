"""The client-state store: states keyed by population index, created lazily.

A client costs 4 bytes (its row number, -1 while it has none) until its first state is written;
then it gets the next row. Rows live in chunks of ``chunk_rows`` rows, allocated when the first of
their rows is, either in host memory or as memory-mapped files in a directory (the run's
workdir). Every write marks its chunk dirty, so a checkpoint copies only the chunks changed since
the last one (``state.checkpoint``).

Rows are allocated in the order clients are first scattered, so every process of a multi-process
run, passing the same cohort indices in the same order, allocates the same rows; each process then
writes only the rows of its own devices' clients (``written``) into the shared memory-mapped
files. A memory-backed store is per process: multi-process runs need ``backing='memmap'`` on a
shared workdir.
"""

import errno
import os
import pathlib

import numpy as np

from fedjaxscale.core.types import PyTree
from fedjaxscale.state.layout import StateLayout

BACKINGS = ("memory", "memmap")
CHUNK_BYTES = 4 << 20  # default chunk size: about 4 MiB


class StoreError(RuntimeError):
  """A store that cannot be created, written or restored (the message names the file)."""


def default_chunk_rows(row_bytes: int) -> int:
  return int(max(1, min(65536, CHUNK_BYTES // max(row_bytes, 1))))


class ClientStateStore:
  """Per-client states of a population, held between rounds.

  Args:
    layout: the state's row layout (``StateLayout.from_spec``).
    num_clients: the population size N (indices are ``0..N-1``).
    backing: ``'memory'`` or ``'memmap'``.
    directory: where a memory-mapped store keeps its live chunk files (required for ``'memmap'``).
    chunk_rows: rows per chunk (default: about 4 MiB a chunk).
    clear: delete live chunk files an earlier run left in ``directory`` (default). In a
      multi-process run only one process clears, before the others open the store.

  Example::

    store = ClientStateStore(StateLayout.from_spec(alg.state_spec(server)), dataset.num_clients)
    states, fresh = store.gather(indices)
    server, diagnostics, new = alg.apply(server, cohort, key, states, fresh)
    store.scatter(indices, new.states, new.written)
  """

  def __init__(
    self,
    layout: StateLayout,
    num_clients: int,
    backing: str = "memory",
    directory: str | pathlib.Path | None = None,
    chunk_rows: int | None = None,
    clear: bool = True,
  ):
    if backing not in BACKINGS:
      raise ValueError(f"unknown state store backing {backing!r}; expected one of {BACKINGS}")
    if backing == "memmap" and directory is None:
      raise ValueError("a memory-mapped state store needs a directory")
    self.layout = layout
    self.num_clients = int(num_clients)
    self.backing = backing
    self.directory = None if directory is None else pathlib.Path(directory)
    self.chunk_rows = int(chunk_rows or default_chunk_rows(layout.row_bytes))
    self.row_of = np.full(self.num_clients, -1, np.int64 if self.num_clients >= 2**31 else np.int32)
    self.num_rows = 0
    self.chunks: list[np.ndarray] = []
    self.dirty: set[int] = set()
    if self.directory is not None and backing == "memmap":
      self.directory.mkdir(parents=True, exist_ok=True)
      if clear:  # stale rows of a killed run would read as stored states
        for path in self.directory.glob("live-*.bin"):
          path.unlink()

  # -- sizes ----------------------------------------------------------------------------------

  @property
  def nbytes(self) -> int:
    """Bytes held: the row index plus every allocated chunk."""
    return int(self.row_of.nbytes + len(self.chunks) * self.chunk_rows * self.layout.row_bytes)

  @property
  def num_stored(self) -> int:
    return self.num_rows

  # -- chunks ---------------------------------------------------------------------------------

  def chunk_path(self, c: int) -> pathlib.Path:
    return self.directory / f"live-{c:06d}.bin"

  def _new_chunk(self) -> np.ndarray:
    c = len(self.chunks)
    shape = (self.chunk_rows, self.layout.row_bytes)
    if self.backing == "memory":
      return np.zeros(shape, np.uint8)
    path = self.chunk_path(c)
    size = shape[0] * shape[1]
    existed = path.exists()
    try:
      # Never truncate: in a multi-process run another process may have created (and written
      # into) this chunk already. A file left by an earlier run is zeroed by whoever allocates it
      # first in this run (restore then overwrites it).
      fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
      try:
        # Reserve the blocks now: a full disk fails here, cleanly, instead of as a SIGBUS when a
        # page of a sparse memory-mapped file is first written.
        os.posix_fallocate(fd, 0, size)
      finally:
        os.close(fd)
    except OSError as e:
      if not existed:
        path.unlink(missing_ok=True)
      reason = "the disk is full" if e.errno == errno.ENOSPC else e.strerror
      raise StoreError(f"cannot create state chunk {path} ({size:,} bytes): {reason}") from None
    return np.memmap(path, np.uint8, mode="r+", shape=shape)

  def load_chunk(self, c: int, data: np.ndarray) -> None:
    """Puts a chunk's bytes in place (restore); chunks must be loaded in order."""
    while len(self.chunks) <= c:
      self.chunks.append(self._new_chunk())
    self.chunks[c][:] = data

  def _allocate(self, indices: np.ndarray) -> None:
    new = indices[self.row_of[indices] < 0]
    if not len(new):
      return
    _, first = np.unique(new, return_index=True)
    new = new[np.sort(first)]  # first-appearance order: the same on every process
    rows = self.num_rows + np.arange(len(new))
    need = -(-(self.num_rows + len(new)) // self.chunk_rows)
    while len(self.chunks) < need:
      self.chunks.append(self._new_chunk())
    self.row_of[new] = rows
    self.num_rows += len(new)

  # -- reads and writes -----------------------------------------------------------------------

  def _check(self, indices) -> np.ndarray:
    indices = np.asarray(indices, np.int64).reshape(-1)
    bad = indices[(indices < 0) | (indices >= self.num_clients)]
    if len(bad):
      raise IndexError(f"state store of {self.num_clients} clients: indices out of range {bad[:5].tolist()}")
    return indices

  def _rows(self, rows: np.ndarray) -> np.ndarray:
    out = np.zeros((len(rows), self.layout.row_bytes), np.uint8)
    ok = rows >= 0
    chunk, within = np.divmod(rows, self.chunk_rows)
    for c in np.unique(chunk[ok]):
      sel = ok & (chunk == c)
      out[sel] = self.chunks[c][within[sel]]
    return out

  def gather(self, indices) -> tuple[PyTree, np.ndarray]:
    """The states of ``indices``: ``(states [k, ...] in the program's dtypes, fresh bool [k])``.

    ``fresh`` is True for a client with no stored state (its row is zeros; the engine replaces
    it with the program's initial state).
    """
    indices = self._check(indices)
    data = self._rows(self.row_of[indices].astype(np.int64))
    return self.layout.decode(data), data[:, self.layout.flag_offset] == 0

  def scatter(self, indices, states: PyTree, written=None) -> None:
    """Stores ``states`` ``[k, ...]`` for ``indices``; rows where ``written`` is False are left alone.

    Rows are allocated for all ``indices`` (so processes that write different subsets still
    agree on the row of every client).
    """
    indices = self._check(indices)
    written = np.ones(len(indices), bool) if written is None else np.asarray(written, bool)
    if written.shape != indices.shape:
      raise ValueError(f"written has shape {written.shape}, indices {indices.shape}")
    self._allocate(indices)
    # Chunks are dirty for every index, written or not, so all processes agree on what changed.
    self.dirty.update(int(c) for c in np.unique(self.row_of[indices].astype(np.int64) // self.chunk_rows))
    if not written.any():
      return
    idx = indices[written]
    data = self.layout.encode(
      self.layout.treedef.unflatten([np.asarray(x)[written] for x in self.layout.treedef.flatten_up_to(states)]),
      len(idx),
    )
    chunk, within = np.divmod(self.row_of[idx].astype(np.int64), self.chunk_rows)
    for c in np.unique(chunk):
      sel = chunk == c
      self.chunks[c][within[sel]] = data[sel]

  def flush(self) -> None:
    for chunk in self.chunks:
      if isinstance(chunk, np.memmap):
        chunk.flush()
