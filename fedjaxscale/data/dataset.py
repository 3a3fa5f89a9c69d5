"""The on-disk federated dataset layout: a writer and a memory-mapped reader.

One directory per split (``root/train``, ``root/test``, ...) holds::

    meta.json            format version, features {name: {dtype, shape}}, num_clients,
                         num_examples, label_names (optional), provenance (free dict)
    client_ids.npy       [N] unicode strings (loadable with allow_pickle=False)
    client_offsets.npy   [N + 1] int64; client i owns rows offsets[i]:offsets[i+1]
    <feature>.npy        [num_examples, *shape] per feature, rows sorted by client

Features are opened with ``np.load(mmap_mode='r')``, so taking one client's examples is a slice
of a memory map: nothing else is read. Opening validates only metadata, headers, file sizes and
the O(N) offsets, never feature contents.

Example::

    ds = write_dataset('/tmp/ds/train', ['a', 'b'],
                       {'x': np.zeros((3, 2), np.float32), 'y': np.array([0, 1, 1])},
                       client_sizes=[1, 2])
    ds = FederatedDataset.open('/tmp/ds/train')
    ds.client('b')['y']   # -> memmap([1, 1])

This module imports NumPy only, so the host half can use it without JAX.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import tempfile
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import numpy as np

__all__ = [
  "FORMAT_VERSION",
  "DatasetError",
  "FederatedDataset",
  "open_splits",
  "write_dataset",
  "write_dataset_from_clients",
]

FORMAT_VERSION = 1
FORMAT_NAME = "fedjaxscale.federated_dataset"
META_FILE = "meta.json"
IDS_FILE = "client_ids.npy"
OFFSETS_FILE = "client_offsets.npy"
_REQUIRED_META_KEYS = ("format_version", "features", "num_clients", "num_examples")
# Feature names become file names, so keep them to a portable character set and away from
# the layout's own files.
_FEATURE_NAME = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.-]*$")
_RESERVED_NAMES = frozenset({"client_ids", "client_offsets", "meta"})


class DatasetError(ValueError):
  """A dataset on disk (or given to the writer) is malformed; the message names the file."""


# --------------------------------------------------------------------------------------------
# Reading.


class FederatedDataset:
  """A federated dataset: clients, each owning a contiguous block of rows of every feature.

  Use `FederatedDataset.open(path)` for the on-disk layout (features are read-only memory
  maps). `subset` gives an in-memory dataset with the same interface (``path`` is None).

  Attributes:
    path: the split directory, or None for an in-memory dataset.
    meta: the parsed ``meta.json``.
    client_ids: [N] unicode array.
    offsets: [N + 1] int64; client i owns rows ``offsets[i]:offsets[i+1]``.
    client_sizes: [N] int64 example counts.
    num_clients, num_examples: ints.
    features: {name: array [num_examples, *shape]} (memory maps when opened from disk).
    feature_specs: {name: (dtype, per-example shape)}.
    label_names: class names of the label feature, or None.
  """

  def __init__(
    self,
    *,
    client_ids: np.ndarray,
    offsets: np.ndarray,
    features: dict[str, np.ndarray],
    meta: dict[str, Any],
    path: str | None = None,
  ):
    # Private: callers use `open`, `write_dataset` or `subset`, which validate.
    self.path = path
    self.meta = meta
    self.client_ids = client_ids
    self.offsets = offsets
    self.features = features
    self.feature_specs = {k: (v.dtype, tuple(v.shape[1:])) for k, v in features.items()}
    self.client_sizes = np.diff(offsets)
    self.num_clients = int(client_ids.shape[0])
    self.num_examples = int(offsets[-1])
    label_names = meta.get("label_names")
    self.label_names = None if label_names is None else list(label_names)
    self._sorted_ids: tuple[np.ndarray, np.ndarray] | None = None

  @classmethod
  def open(cls, path: str | os.PathLike) -> FederatedDataset:
    """Opens and validates a split directory; features are memory-mapped read-only.

    Raises:
      DatasetError: naming the file and the problem, for any malformed or missing part.
    """
    path = os.fspath(path)
    if not os.path.isdir(path):
      raise DatasetError(f"{path}: not a directory")
    meta = _read_meta(os.path.join(path, META_FILE))
    specs = _parse_feature_specs(meta, os.path.join(path, META_FILE))
    num_clients, num_examples = meta["num_clients"], meta["num_examples"]

    ids_file = os.path.join(path, IDS_FILE)
    client_ids = _load_npy(ids_file, mmap=False)
    _check_client_ids(client_ids, ids_file, num_clients)

    offsets_file = os.path.join(path, OFFSETS_FILE)
    offsets = _load_npy(offsets_file, mmap=False)
    offsets = _check_offsets(offsets, offsets_file, num_clients, num_examples)

    features = {}
    first: tuple[str, int] | None = None
    for name, (dtype, shape) in specs.items():
      file = os.path.join(path, name + ".npy")
      arr = _load_npy(file, mmap=True)
      if arr.ndim < 1:
        raise DatasetError(f"{file}: holds a 0-d array; a feature needs a leading row axis")
      if first is None:
        first = (name, arr.shape[0])
      elif arr.shape[0] != first[1]:
        raise DatasetError(
          f"{file}: has {arr.shape[0]} rows but {first[0]}.npy has {first[1]}: features must have equal row counts"
        )
      if arr.dtype != dtype:
        raise DatasetError(f"{file}: dtype {_dtype_str(arr.dtype)} does not match {META_FILE} ({_dtype_str(dtype)})")
      if tuple(arr.shape[1:]) != shape:
        raise DatasetError(f"{file}: per-example shape {tuple(arr.shape[1:])} does not match {META_FILE} {shape}")
      if arr.shape[0] != num_examples:
        raise DatasetError(
          f"{file}: has {arr.shape[0]} rows but {META_FILE} num_examples and {OFFSETS_FILE} end at {num_examples}"
        )
      features[name] = arr
    return cls(client_ids=client_ids, offsets=offsets, features=features, meta=meta, path=path)

  def __repr__(self) -> str:
    feats = ", ".join(f"{k}: {_dtype_str(d)}{list(s)}" for k, (d, s) in self.feature_specs.items())
    where = f"{self.path!r}" if self.path is not None else "in memory"
    return f"FederatedDataset({where}, {self.num_clients} clients, {self.num_examples} examples, {{{feats}}})"

  # ------------------------------------------------------------------------------------------
  # Lookup.

  def client_index(self, client_ids: str | Iterable[str]) -> np.ndarray:
    """Maps client ids to positions (int64). A single id gives a 0-d array.

    Vectorized (binary search over the sorted ids), so cohorts of thousands cost no Python
    loop per client.

    Raises:
      DatasetError: naming the unknown ids.
    """
    query = np.asarray(client_ids)
    if query.size == 0:
      return np.zeros(query.shape, np.int64)
    if query.dtype.kind != "U":
      raise DatasetError(f"client ids must be strings, got dtype {query.dtype}")
    if self._sorted_ids is None:
      order = np.argsort(self.client_ids, kind="stable")
      self._sorted_ids = (self.client_ids[order], order.astype(np.int64))
    sorted_ids, order = self._sorted_ids
    pos = np.searchsorted(sorted_ids, query)
    pos_c = np.minimum(pos, max(len(sorted_ids) - 1, 0))
    found = (pos < len(sorted_ids)) & (sorted_ids[pos_c] == query) if len(sorted_ids) else (np.zeros(query.shape, bool))
    if not np.all(found):
      missing = np.unique(query[~found])
      shown = ", ".join(repr(str(m)) for m in missing[:10])
      more = f" and {len(missing) - 10} more" if len(missing) > 10 else ""
      raise DatasetError(f"{self._where()}: unknown client id(s) {shown}{more}")
    return order[pos_c]

  def _position(self, client: str | int | np.integer) -> int:
    if isinstance(client, (str, np.str_)):
      return int(self.client_index(client))
    if isinstance(client, (int, np.integer)) and not isinstance(client, bool):
      if not 0 <= client < self.num_clients:
        raise DatasetError(f"{self._where()}: client index {client} out of range [0, {self.num_clients})")
      return int(client)
    raise DatasetError(f"a client is a str id or an int index, got {type(client).__name__}")

  def client(self, client: str | int) -> dict[str, np.ndarray]:
    """One client's examples by id or position: slices (views) of every feature, no copy."""
    i = self._position(client)
    start, stop = int(self.offsets[i]), int(self.offsets[i + 1])
    return {k: v[start:stop] for k, v in self.features.items()}

  def clients(self, clients: Iterable[str | int]) -> list[dict[str, np.ndarray]]:
    """Several clients' examples (views), in the order given."""
    return [self.client(c) for c in clients]

  def client_rows(self, clients: Iterable[str | int] | np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Positions (ids or int indices) -> (their example rows concatenated, their sizes).

    The fast path for gathering a cohort: ``ds.rows(ds.client_rows(idx)[0])``.
    """
    idx = self._positions(clients)
    starts, sizes = self.offsets[idx], self.client_sizes[idx]
    ends = np.cumsum(sizes)
    # Row r of the output is client c's start plus r's position within c's block, computed
    # for all rows at once (no Python loop over clients).
    shift = np.repeat(starts - (ends - sizes), sizes)
    return shift + np.arange(int(ends[-1]) if len(ends) else 0, dtype=np.int64), sizes

  def rows(self, row_indices: np.ndarray | Sequence[int]) -> dict[str, np.ndarray]:
    """Gathers rows across every feature (fancy indexing: copies only those rows)."""
    row_indices = np.asarray(row_indices, dtype=np.int64)
    return {k: np.asarray(v[row_indices]) for k, v in self.features.items()}

  def subset(self, clients: Iterable[str | int] | np.ndarray) -> FederatedDataset:
    """An in-memory dataset of the given clients (ids or positions), in the order given."""
    idx = self._positions(clients)
    if len(np.unique(idx)) != len(idx):
      raise DatasetError(f"{self._where()}: subset lists a client more than once")
    rows, sizes = self.client_rows(idx)
    offsets = np.concatenate([[0], np.cumsum(sizes)]).astype(np.int64)
    meta = dict(self.meta, num_clients=int(len(idx)), num_examples=int(offsets[-1]))
    return FederatedDataset(
      client_ids=self.client_ids[idx], offsets=offsets, features=self.rows(rows), meta=meta, path=None
    )

  def _positions(self, clients: Iterable[str | int] | np.ndarray) -> np.ndarray:
    arr = np.asarray(clients if isinstance(clients, np.ndarray) else list(clients))
    if arr.size == 0:
      return np.zeros(0, np.int64)
    if arr.dtype.kind == "U":
      return self.client_index(arr).reshape(-1)
    if arr.dtype.kind in "iu":
      arr = arr.astype(np.int64).reshape(-1)
      bad = (arr < 0) | (arr >= self.num_clients)
      if np.any(bad):
        raise DatasetError(f"{self._where()}: client index {int(arr[bad][0])} out of range [0, {self.num_clients})")
      return arr
    raise DatasetError(f"clients are str ids or int indices, got dtype {arr.dtype}")

  def _where(self) -> str:
    return self.path if self.path is not None else "in-memory dataset"


def open_splits(root: str | os.PathLike) -> dict[str, FederatedDataset]:
  """Opens every subdirectory of ``root`` that holds a ``meta.json``, keyed by its name."""
  root = os.fspath(root)
  if not os.path.isdir(root):
    raise DatasetError(f"{root}: not a directory")
  splits = {
    name: FederatedDataset.open(os.path.join(root, name))
    for name in sorted(os.listdir(root))
    if os.path.isfile(os.path.join(root, name, META_FILE))
  }
  if not splits:
    raise DatasetError(f"{root}: no split directories (subdirectories holding {META_FILE})")
  return splits


def _read_meta(file: str) -> dict[str, Any]:
  try:
    with open(file, encoding="utf-8") as f:
      meta = json.load(f)
  except FileNotFoundError:
    raise DatasetError(f"{file}: missing") from None
  except (json.JSONDecodeError, UnicodeDecodeError) as e:
    raise DatasetError(f"{file}: not valid JSON ({e})") from None
  except OSError as e:
    raise DatasetError(f"{file}: unreadable ({e})") from None
  if not isinstance(meta, dict):
    raise DatasetError(f"{file}: expected a JSON object, got {type(meta).__name__}")
  missing = [k for k in _REQUIRED_META_KEYS if k not in meta]
  if missing:
    raise DatasetError(f"{file}: missing required key(s) {missing}")
  version = meta["format_version"]
  if not isinstance(version, int) or isinstance(version, bool) or version < 1:
    raise DatasetError(f"{file}: format_version must be a positive int, got {version!r}")
  if version > FORMAT_VERSION:
    raise DatasetError(f"{file}: format_version {version} is newer than this reader ({FORMAT_VERSION})")
  for key in ("num_clients", "num_examples"):
    v = meta[key]
    if not isinstance(v, int) or isinstance(v, bool) or v < 0:
      raise DatasetError(f"{file}: {key} must be a non-negative int, got {v!r}")
  label_names = meta.get("label_names")
  if label_names is not None and not (isinstance(label_names, list) and all(isinstance(s, str) for s in label_names)):
    raise DatasetError(f"{file}: label_names must be a list of strings or null")
  if not isinstance(meta.get("provenance", {}), dict):
    raise DatasetError(f"{file}: provenance must be an object")
  return meta


def _parse_feature_specs(meta: dict[str, Any], file: str) -> dict[str, tuple[np.dtype, tuple]]:
  features = meta["features"]
  if not isinstance(features, dict) or not features:
    raise DatasetError(f"{file}: features must be a non-empty object")
  specs = {}
  for name, spec in features.items():
    _check_feature_name(name, file)
    if not isinstance(spec, dict) or "dtype" not in spec or "shape" not in spec:
      raise DatasetError(f'{file}: feature {name!r} needs "dtype" and "shape"')
    try:
      dtype = np.dtype(spec["dtype"])
    except TypeError:
      raise DatasetError(f"{file}: feature {name!r} has unknown dtype {spec['dtype']!r}") from None
    shape = spec["shape"]
    if not isinstance(shape, list) or not all(isinstance(d, int) and not isinstance(d, bool) and d >= 0 for d in shape):
      raise DatasetError(f"{file}: feature {name!r} shape must be a list of non-negative ints, got {shape!r}")
    specs[name] = (dtype, tuple(shape))
  return specs


def _load_npy(file: str, *, mmap: bool) -> np.ndarray:
  if not os.path.isfile(file):
    raise DatasetError(f"{file}: missing")
  try:
    arr = np.load(file, mmap_mode="r" if mmap else None, allow_pickle=False)
  except Exception as e:  # np.load raises ValueError, OSError, EOFError... for bad files.
    raise DatasetError(f"{file}: unreadable or truncated .npy ({type(e).__name__}: {e})") from None
  if mmap and isinstance(arr, np.memmap):
    # np.load accepts trailing bytes silently; a file longer than its header says is as
    # suspect as a short one.
    expected = arr.offset + arr.nbytes
    actual = os.path.getsize(file)
    if actual != expected:
      raise DatasetError(f"{file}: {actual} bytes on disk but its header describes {expected}")
  return arr


def _check_client_ids(ids: np.ndarray, where: str, num_clients: int | None) -> None:
  if ids.ndim != 1:
    raise DatasetError(f"{where}: client ids must be 1-D, got shape {ids.shape}")
  if ids.dtype.kind != "U":
    raise DatasetError(f"{where}: client ids must be unicode strings, got dtype {ids.dtype}")
  if num_clients is not None and ids.shape[0] != num_clients:
    raise DatasetError(f"{where}: holds {ids.shape[0]} client ids but {META_FILE} num_clients is {num_clients}")
  uniq, counts = np.unique(ids, return_counts=True)
  if len(uniq) != len(ids):
    dups = ", ".join(repr(str(u)) for u in uniq[counts > 1][:10])
    raise DatasetError(f"{where}: duplicate client id(s) {dups}")


def _check_offsets(offsets: np.ndarray, where: str, num_clients: int, num_examples: int) -> np.ndarray:
  if offsets.ndim != 1 or offsets.dtype.kind not in "iu":
    raise DatasetError(f"{where}: offsets must be a 1-D integer array, got {offsets.dtype} of shape {offsets.shape}")
  if offsets.shape[0] != num_clients + 1:
    raise DatasetError(f"{where}: has {offsets.shape[0]} offsets; expected num_clients + 1 = {num_clients + 1}")
  offsets = offsets.astype(np.int64)
  if offsets[0] != 0:
    raise DatasetError(f"{where}: offsets must start at 0, got {offsets[0]}")
  bad = np.flatnonzero(np.diff(offsets) < 0)
  if bad.size:
    i = int(bad[0])
    raise DatasetError(
      f"{where}: offsets must be non-decreasing; offsets[{i + 1}] = {offsets[i + 1]} < offsets[{i}] = {offsets[i]}"
    )
  if offsets[-1] != num_examples:
    raise DatasetError(
      f"{where}: offsets end at {offsets[-1]} but the row count ({META_FILE} num_examples) is {num_examples}"
    )
  return offsets


def _check_feature_name(name: Any, where: str) -> None:
  if not isinstance(name, str) or not _FEATURE_NAME.match(name) or name in _RESERVED_NAMES:
    raise DatasetError(
      f'{where}: bad feature name {name!r} (letters, digits, "_", ".", "-"; not one of {sorted(_RESERVED_NAMES)})'
    )


def _dtype_str(dtype: np.dtype) -> str:
  """A readable dtype spelling that round-trips through np.dtype (e.g. 'float32', '<U7')."""
  dtype = np.dtype(dtype)
  if dtype.kind in "biufc" and dtype.isnative and np.dtype(dtype.name) == dtype:
    return dtype.name
  return dtype.str


# --------------------------------------------------------------------------------------------
# Writing.


def write_dataset(
  path: str | os.PathLike,
  client_ids: Sequence[str] | np.ndarray,
  features: Mapping[str, np.ndarray],
  client_sizes: Sequence[int] | np.ndarray,
  *,
  label_names: Sequence[str] | None = None,
  provenance: Mapping[str, Any] | None = None,
  overwrite: bool = False,
) -> FederatedDataset:
  """Writes one split directory in the layout and returns it opened.

  The files are written into a temporary sibling directory (``meta.json`` last) that is then
  renamed into place, so a failure never leaves a half-written dataset that looks valid.

  Args:
    path: the split directory (e.g. ``root/train``); its parent is created if needed.
    client_ids: N unique strings.
    features: name -> array whose rows are already sorted by client.
    client_sizes: N non-negative example counts; their sum is every feature's row count.
    label_names: optional class names for the label feature.
    provenance: free JSON-serializable dict (generator, parameters, source).
    overwrite: replace an existing dataset at ``path``. Even then, a directory holding
      anything but ``.npy``/``.json`` files is never replaced.

  Returns:
    `FederatedDataset.open(path)`.

  Raises:
    DatasetError: for malformed inputs or an existing dataset without ``overwrite``.
  """
  path = os.path.abspath(os.fspath(path))
  ids = _as_client_ids(client_ids)
  sizes = np.asarray(client_sizes)
  if sizes.ndim != 1 or (sizes.size and sizes.dtype.kind not in "iu"):
    raise DatasetError(f"client_sizes must be a 1-D integer array, got {sizes.dtype} of shape {sizes.shape}")
  sizes = sizes.astype(np.int64)
  if len(sizes) != len(ids):
    raise DatasetError(f"{len(ids)} client ids but {len(sizes)} client sizes")
  if np.any(sizes < 0):
    raise DatasetError("client_sizes must be non-negative")
  offsets = np.concatenate([[0], np.cumsum(sizes)]).astype(np.int64)
  num_examples = int(offsets[-1])

  if not isinstance(features, Mapping) or not features:
    raise DatasetError("features must be a non-empty mapping of name -> array")
  arrays = {}
  for name, value in features.items():
    _check_feature_name(name, "features")
    arr = np.asarray(value)
    if arr.ndim < 1:
      raise DatasetError(f"feature {name!r} is 0-d; it needs a leading row axis")
    arr = np.ascontiguousarray(arr)  # C order, so a client's rows are one contiguous block.
    if arr.dtype.kind in "OV":
      raise DatasetError(
        f"feature {name!r} has dtype {arr.dtype}, which cannot be "
        "memory-mapped; use a numeric or fixed-width string dtype"
      )
    if arr.shape[0] != num_examples:
      raise DatasetError(f"feature {name!r} has {arr.shape[0]} rows but client_sizes sum to {num_examples}")
    arrays[name] = arr

  if label_names is not None:
    label_names = [str(s) for s in label_names]
  meta = {
    "format": FORMAT_NAME,
    "format_version": FORMAT_VERSION,
    "num_clients": int(len(ids)),
    "num_examples": num_examples,
    "features": {k: {"dtype": _dtype_str(v.dtype), "shape": list(v.shape[1:])} for k, v in arrays.items()},
    "label_names": label_names,
    "provenance": dict(provenance or {}),
  }
  try:
    meta_text = json.dumps(meta, indent=2, default=_json_default, allow_nan=False) + "\n"
  except (TypeError, ValueError) as e:
    raise DatasetError(f"provenance is not JSON-serializable: {e}") from None

  _check_destination(path, overwrite)
  parent = os.path.dirname(path)
  os.makedirs(parent, exist_ok=True)
  tmp = tempfile.mkdtemp(prefix=f".{os.path.basename(path)}.tmp-", dir=parent)
  try:
    np.save(os.path.join(tmp, IDS_FILE), ids, allow_pickle=False)
    np.save(os.path.join(tmp, OFFSETS_FILE), offsets, allow_pickle=False)
    for name, arr in arrays.items():
      np.save(os.path.join(tmp, name + ".npy"), arr, allow_pickle=False)
    with open(os.path.join(tmp, META_FILE), "w", encoding="utf-8") as f:
      f.write(meta_text)
    _replace_dir(tmp, path)
  except BaseException:
    shutil.rmtree(tmp, ignore_errors=True)
    raise
  return FederatedDataset.open(path)


def write_dataset_from_clients(
  path: str | os.PathLike,
  clients: (Mapping[str, Mapping[str, np.ndarray]] | Sequence[tuple[str, Mapping[str, np.ndarray]]]),
  **kwargs: Any,
) -> FederatedDataset:
  """Writes a dataset from per-client example dicts (``{id: {feature: array}}`` or pairs).

  Every client must have the same features with the same dtype and per-example shape.
  Keyword arguments go to `write_dataset`.
  """
  items = list(clients.items()) if isinstance(clients, Mapping) else list(clients)
  if not items:
    raise DatasetError("no clients given")
  names = list(items[0][1].keys())
  ids, sizes, columns = [], [], {k: [] for k in names}
  for cid, examples in items:
    if sorted(examples.keys()) != sorted(names):
      raise DatasetError(f"client {cid!r} has features {sorted(examples.keys())}; expected {sorted(names)}")
    n = None
    for k in names:
      arr = np.asarray(examples[k])
      if arr.ndim < 1:
        raise DatasetError(f"client {cid!r} feature {k!r} is 0-d; it needs a row axis")
      if n is None:
        n = arr.shape[0]
      elif arr.shape[0] != n:
        raise DatasetError(f"client {cid!r}: feature {k!r} has {arr.shape[0]} rows, another has {n}")
      if columns[k]:
        ref = columns[k][0]
        if arr.dtype != ref.dtype or arr.shape[1:] != ref.shape[1:]:
          raise DatasetError(
            f"client {cid!r} feature {k!r} is {arr.dtype}{list(arr.shape[1:])} but client "
            f"{items[0][0]!r} has {ref.dtype}{list(ref.shape[1:])}"
          )
      columns[k].append(arr)
    ids.append(cid)
    sizes.append(n)
  features = {k: np.concatenate(v, axis=0) for k, v in columns.items()}
  return write_dataset(path, ids, features, np.asarray(sizes, np.int64), **kwargs)


def _as_client_ids(client_ids: Sequence[str] | np.ndarray) -> np.ndarray:
  ids = np.asarray(client_ids)
  if ids.size == 0:
    return np.zeros(0, dtype="<U1")
  if ids.ndim != 1 or ids.dtype.kind != "U":
    raise DatasetError(f"client_ids must be a 1-D sequence of str, got {ids.dtype} of shape {ids.shape}")
  _check_client_ids(ids, "client_ids", None)
  return ids


def _json_default(obj: Any) -> Any:
  if isinstance(obj, np.generic):
    return obj.item()
  if isinstance(obj, np.ndarray):
    return obj.tolist()
  raise TypeError(f"{type(obj).__name__} is not JSON-serializable")


def _check_destination(path: str, overwrite: bool) -> None:
  if not os.path.exists(path):
    return
  if not os.path.isdir(path):
    raise DatasetError(f"{path}: exists and is not a directory")
  entries = os.listdir(path)
  if not entries:
    return
  if os.path.exists(os.path.join(path, META_FILE)) and not overwrite:
    raise DatasetError(f"{path}: already holds a dataset; pass overwrite=True to replace it")
  foreign = [e for e in entries if not (e.endswith((".npy", ".json")) and os.path.isfile(os.path.join(path, e)))]
  if foreign:
    raise DatasetError(f"{path}: not empty and holds non-dataset entries {sorted(foreign)[:5]}; refusing to replace it")
  if not overwrite:
    raise DatasetError(
      f"{path}: holds .npy/.json files but no {META_FILE} (a partial dataset?); pass overwrite=True to replace it"
    )


def _replace_dir(tmp: str, path: str) -> None:
  """Moves the finished ``tmp`` to ``path``; an old dataset there is renamed away first."""
  if not os.path.exists(path):
    os.rename(tmp, path)
    return
  old = tempfile.mkdtemp(prefix=f".{os.path.basename(path)}.old-", dir=os.path.dirname(path))
  os.rmdir(old)
  os.rename(path, old)
  try:
    os.rename(tmp, path)
  except BaseException:
    os.rename(old, path)
    raise
  shutil.rmtree(old, ignore_errors=True)
