"""The store's size, estimated at setup, and the check that it fits.

At most ``min(N, rounds x clients a round)`` clients ever get a state, each ``row_bytes``; a
memory-mapped store also needs room on disk for its checkpoint copies (every checkpoint kept can
name a full copy of each chunk in the worst case).
"""

import dataclasses
import pathlib
import shutil

from fedjaxscale.state.layout import StateLayout
from fedjaxscale.state.store import default_chunk_rows


@dataclasses.dataclass(frozen=True)
class StoreEstimate:
  """The most the store can hold.

  Attributes:
    clients: the most clients that can get a state.
    row_bytes: bytes per client.
    live_bytes: the live store (rows rounded up to whole chunks, plus the 4-byte row index).
    checkpoint_bytes: the worst case of the checkpoint copies on disk.
    backing: ``'memory'`` or ``'memmap'``, as chosen.
  """

  clients: int
  row_bytes: int
  live_bytes: int
  checkpoint_bytes: int
  backing: str

  def describe(self) -> str:
    return (
      f"{self.clients:,} clients x {self.row_bytes:,} state bytes = {self.live_bytes / 2**20:,.1f} MiB live "
      f"({self.backing}), up to {self.checkpoint_bytes / 2**20:,.1f} MiB in checkpoints"
    )


class StoreTooLarge(ValueError):
  """The store would not fit the budget or the disk; the message has the numbers."""


def estimate(
  layout: StateLayout,
  num_clients: int,
  max_selected: int | None = None,
  *,
  backing: str = "auto",
  memory_limit_bytes: int = 1 << 30,
  checkpoints_kept: int = 2,
) -> StoreEstimate:
  """Sizes the store; ``backing='auto'`` picks memory up to ``memory_limit_bytes``, else memmap."""
  clients = int(num_clients if max_selected is None else min(num_clients, max_selected))
  rows = default_chunk_rows(layout.row_bytes)
  chunked = -(-clients // rows) * rows * layout.row_bytes
  live = chunked + 4 * int(num_clients)
  if backing == "auto":
    backing = "memory" if live <= memory_limit_bytes else "memmap"
  return StoreEstimate(clients, layout.row_bytes, live, chunked * (checkpoints_kept + 1), backing)


def check_fits(est: StoreEstimate, budget_bytes: int | None, directory: str | pathlib.Path, field: str) -> None:
  """Raises ``StoreTooLarge`` naming ``field`` when the store exceeds the budget or the free disk."""
  if budget_bytes is not None and est.live_bytes > budget_bytes:
    raise StoreTooLarge(
      f"{field}: the client-state store would need {est.describe()}, over the budget of {budget_bytes / 2**20:,.1f} MiB"
    )
  directory = pathlib.Path(directory)
  while not directory.exists():
    directory = directory.parent
  free = shutil.disk_usage(directory).free
  on_disk = est.checkpoint_bytes + (est.live_bytes if est.backing == "memmap" else 0)
  if on_disk > free:
    raise StoreTooLarge(
      f"{field}: the client-state store would need {est.describe()}: {on_disk / 2**20:,.1f} MiB on disk, but "
      f"{directory} has {free / 2**20:,.1f} MiB free"
    )
