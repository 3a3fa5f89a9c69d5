"""Client states between rounds: the store (host memory or memory-mapped), its checkpoints, its size.

Example::

  layout = StateLayout.from_spec(algorithm.state_spec(server), storage_dtype="bfloat16")
  store = ClientStateStore(layout, num_clients=dataset.num_clients)
  states, fresh = store.gather(indices)
  server, diagnostics, new = algorithm.apply(server, cohort, key, states, fresh)
  store.scatter(indices, new.states, new.written)
"""

from fedjaxscale.state.budget import StoreEstimate, StoreTooLarge, check_fits, estimate
from fedjaxscale.state.checkpoint import check_index, collect, restore_chunks, save_chunks
from fedjaxscale.state.layout import STORAGE_DTYPES, StateLayout
from fedjaxscale.state.store import BACKINGS, ClientStateStore, StoreError

__all__ = [
  "BACKINGS",
  "STORAGE_DTYPES",
  "ClientStateStore",
  "StateLayout",
  "StoreError",
  "StoreEstimate",
  "StoreTooLarge",
  "check_fits",
  "check_index",
  "collect",
  "estimate",
  "restore_chunks",
  "save_chunks",
]
