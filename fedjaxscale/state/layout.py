"""How one client's state pytree lies in a store row: leaves packed end to end as bytes.

A row is ``row_bytes`` bytes: every leaf at its byte offset in its storage dtype (the program's
dtype, or e.g. bfloat16 for floating leaves to halve the store), then one flag byte that says
whether the row holds a state (so the flag lives with the data, in memory-mapped files that every
process of a run shares).
"""

import dataclasses
import json

import jax
import ml_dtypes
import numpy as np

from fedjaxscale.core.types import PyTree

STORAGE_DTYPES = ("native", "bfloat16", "float16", "float32")


def _storage(dtype: np.dtype, storage: str) -> np.dtype:
  floating = np.issubdtype(dtype, np.floating) or dtype == np.dtype(ml_dtypes.bfloat16)
  if storage == "native" or not floating:
    return dtype
  return np.dtype(ml_dtypes.bfloat16) if storage == "bfloat16" else np.dtype(storage)


@dataclasses.dataclass(frozen=True)
class StateLayout:
  """One client's state as a store row.

  Attributes:
    treedef: the state pytree's structure.
    names: each leaf's path (``jax.tree_util.keystr``).
    shapes: each leaf's shape (without the client axis).
    dtypes: each leaf's dtype in the program.
    storage: each leaf's dtype in the store.
    offsets: each leaf's byte offset in the row.
    row_bytes: bytes per row, flag byte included.
    storage_dtype: the configured storage (``'native'``, ``'bfloat16'``, ...).
  """

  treedef: jax.tree_util.PyTreeDef
  names: tuple[str, ...]
  shapes: tuple[tuple[int, ...], ...]
  dtypes: tuple[np.dtype, ...]
  storage: tuple[np.dtype, ...]
  offsets: tuple[int, ...]
  row_bytes: int
  storage_dtype: str

  @classmethod
  def from_spec(cls, spec: PyTree, storage_dtype: str = "native") -> "StateLayout":
    """From a pytree of ``jax.ShapeDtypeStruct`` (e.g. ``StatefulAlgorithm.state_spec``)."""
    if storage_dtype not in STORAGE_DTYPES:
      raise ValueError(f"unknown state storage dtype {storage_dtype!r}; expected one of {STORAGE_DTYPES}")
    leaves, treedef = jax.tree_util.tree_flatten_with_path(spec)
    names, shapes, dtypes, storage, offsets = [], [], [], [], []
    offset = 0
    for path, leaf in leaves:
      dtype = np.dtype(leaf.dtype)
      stored = _storage(dtype, storage_dtype)
      names.append(jax.tree_util.keystr(path) or "<root>")
      shapes.append(tuple(int(d) for d in leaf.shape))
      dtypes.append(dtype)
      storage.append(stored)
      offsets.append(offset)
      offset += int(np.prod(leaf.shape, dtype=np.int64)) * stored.itemsize
    return cls(
      treedef, tuple(names), tuple(shapes), tuple(dtypes), tuple(storage), tuple(offsets), offset + 1, storage_dtype
    )

  @property
  def flag_offset(self) -> int:
    return self.row_bytes - 1

  def leaf_bytes(self, i: int) -> int:
    return int(np.prod(self.shapes[i], dtype=np.int64)) * self.storage[i].itemsize

  def fingerprint(self) -> dict:
    """What a checkpointed store must agree on with the run that resumes it (JSON-able)."""
    return {
      "leaves": [
        [n, list(s), d.name, t.name] for n, s, d, t in zip(self.names, self.shapes, self.dtypes, self.storage)
      ],
      "treedef": str(self.treedef),
      "row_bytes": self.row_bytes,
    }

  def describe_mismatch(self, other: dict) -> str | None:
    """A sentence naming the first difference from another fingerprint, or None."""
    mine = self.fingerprint()
    if json.dumps(mine, sort_keys=True) == json.dumps(other, sort_keys=True):
      return None
    theirs = {leaf[0]: leaf for leaf in other.get("leaves", [])}
    for leaf in mine["leaves"]:
      if leaf[0] not in theirs:
        return f"leaf {leaf[0]} is not in the stored state (it has {sorted(theirs)})"
      if theirs[leaf[0]] != leaf:
        t = theirs[leaf[0]]
        return f"leaf {leaf[0]}: stored as {t[2]}{t[1]} (kept as {t[3]}), this run declares {leaf[2]}{leaf[1]} (kept as {leaf[3]})"
    return f"the state's structure differs: stored {other.get('treedef')}, this run declares {mine['treedef']}"

  def encode(self, states: PyTree, rows: int) -> np.ndarray:
    """Host states ``[rows, ...]`` -> bytes ``[rows, row_bytes]`` (flag byte set)."""
    out = np.zeros((rows, self.row_bytes), np.uint8)
    for i, leaf in enumerate(self.treedef.flatten_up_to(states)):
      value = np.asarray(leaf).astype(self.storage[i], copy=False).reshape(rows, -1)
      out[:, self.offsets[i] : self.offsets[i] + self.leaf_bytes(i)] = value.view(np.uint8).reshape(rows, -1)
    out[:, self.flag_offset] = 1
    return out

  def decode(self, data: np.ndarray) -> PyTree:
    """Bytes ``[rows, row_bytes]`` -> host states ``[rows, ...]`` in the program's dtypes."""
    rows = data.shape[0]
    leaves = []
    for i in range(len(self.names)):
      raw = np.ascontiguousarray(data[:, self.offsets[i] : self.offsets[i] + self.leaf_bytes(i)])
      value = raw.view(self.storage[i]).reshape((rows,) + self.shapes[i])
      leaves.append(value.astype(self.dtypes[i], copy=False))
    return self.treedef.unflatten(leaves)
