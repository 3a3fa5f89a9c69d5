"""FedJAX's per-client blob: zlib-compressed msgpack of ``{feature name: ndarray}``.

Compatible with ``fedjax.core.serialization.msgpack_serialize`` (and so with the ``data``
column of FedJAX's ``federated_data`` SQLite table), without importing FedJAX, JAX or
TensorFlow. FedJAX packs arrays as msgpack extension types:

==== ================ =======================================================================
code name             payload (itself msgpack, binary strings kept raw)
==== ================ =======================================================================
1    ndarray          ``[shape, dtype name, C-order bytes]``
2    native complex   ``[real, imag]``
3    numpy scalar     as ndarray, unpacked to a 0-d value
4    bytes ndarray    ``[shape, [bytes, ...]]``: an object array of bytes (e.g. text snippets)
==== ================ =======================================================================
"""

from __future__ import annotations

import zlib
from collections.abc import Mapping

import msgpack
import numpy as np

__all__ = ["BlobError", "deserialize_client", "serialize_client"]

_NDARRAY, _COMPLEX, _NPSCALAR, _BYTES_NDARRAY = 1, 2, 3, 4


class BlobError(ValueError):
  """A ``data`` blob that is not zlib-compressed FedJAX msgpack."""


def deserialize_client(blob: bytes) -> dict[str, np.ndarray]:
  """Decompresses and decodes one client's examples (``{feature: [n, ...] array}``).

  Numeric arrays are read-only views of the decompressed buffer; bytes features are object
  arrays of ``bytes``.

  Raises:
    BlobError: if the blob is not zlib data, not msgpack, or not a dict of arrays.
  """
  try:
    raw = zlib.decompress(blob)
  except zlib.error as e:
    raise BlobError(f"not zlib-compressed ({e})") from None
  try:
    tree = msgpack.unpackb(raw, ext_hook=_ext_hook, raw=False)
  except BlobError:
    raise
  except Exception as e:  # msgpack raises several unrelated types for corrupt input
    raise BlobError(f"not FedJAX msgpack ({type(e).__name__}: {e})") from None
  if not isinstance(tree, dict) or not all(isinstance(k, str) for k in tree):
    raise BlobError(f"expected a dict of feature name -> array, got {type(tree).__name__}")
  for name, value in tree.items():
    if not isinstance(value, np.ndarray):
      raise BlobError(f"feature {name!r} is a {type(value).__name__}, not an array")
  return tree


def serialize_client(examples: Mapping[str, np.ndarray], level: int = 6) -> bytes:
  """Encodes ``{feature: array}`` exactly as FedJAX's SQLite builder does (msgpack, then zlib)."""
  packed = msgpack.packb({k: np.asarray(v) for k, v in examples.items()}, default=_ext_pack, strict_types=True)
  return zlib.compress(packed, level)


def _ext_hook(code: int, data: bytes):
  if code in (_NDARRAY, _NPSCALAR):
    arr = _ndarray_from_bytes(data)
    return arr[()] if code == _NPSCALAR else arr
  if code == _BYTES_NDARRAY:
    shape, flat = msgpack.unpackb(data, raw=True)
    arr = np.empty(len(flat), dtype=object)
    arr[:] = flat
    return arr.reshape(shape)
  if code == _COMPLEX:
    real, imag = msgpack.unpackb(data)
    return complex(real, imag)
  raise BlobError(f"unknown msgpack extension type {code}")


def _ndarray_from_bytes(data: bytes) -> np.ndarray:
  shape, dtype_name, buffer = msgpack.unpackb(data, raw=True)
  name = dtype_name.decode("ascii") if isinstance(dtype_name, bytes) else dtype_name
  try:
    dtype = np.dtype(name)
  except TypeError:
    if name != "bfloat16":
      raise BlobError(f"unknown dtype {name!r}") from None
    import ml_dtypes  # pylint: disable=g-import-not-at-top  (ships with JAX)

    dtype = np.dtype(ml_dtypes.bfloat16)
  count = int(np.prod(shape, dtype=np.int64))
  if len(buffer) != count * dtype.itemsize:
    raise BlobError(
      f"array of shape {list(shape)} {name} needs {count * dtype.itemsize} bytes, blob holds {len(buffer)}"
    )
  return np.frombuffer(buffer, dtype=dtype).reshape(shape)


def _ext_pack(x):
  if isinstance(x, np.ndarray) and x.dtype.hasobject:
    flat = [bytes(v) if not isinstance(v, str) else v.encode() for v in x.ravel()]
    return msgpack.ExtType(_BYTES_NDARRAY, msgpack.packb((list(x.shape), flat), use_bin_type=True))
  if isinstance(x, np.ndarray):
    return msgpack.ExtType(_NDARRAY, _ndarray_to_bytes(x))
  if isinstance(x, np.generic):
    return msgpack.ExtType(_NPSCALAR, _ndarray_to_bytes(np.asarray(x)))
  if isinstance(x, complex):
    return msgpack.ExtType(_COMPLEX, msgpack.packb((x.real, x.imag)))
  raise TypeError(f"cannot serialize {type(x).__name__}")


def _ndarray_to_bytes(arr: np.ndarray) -> bytes:
  if arr.dtype.kind in "SUV":
    raise TypeError(f"dtype {arr.dtype} is not serializable; use an object array of bytes")
  return msgpack.packb((arr.shape, arr.dtype.name, arr.tobytes("C")), use_bin_type=True)
