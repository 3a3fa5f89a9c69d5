"""A TensorFlow-free codec for serialized ``tf.train.Example`` protos.

TFF's SQLite files store one ``tf.train.Example`` per row. The schema is tiny and has been
stable since TensorFlow 1.0 (``tensorflow/core/example/{example,feature}.proto``)::

    message Example   { Features features = 1; }
    message Features  { map<string, Feature> feature = 1; }   // entries: key = 1, value = 2
    message Feature   { oneof kind { BytesList bytes_list = 1; FloatList float_list = 2;
                                     Int64List int64_list = 3; } }
    message BytesList { repeated bytes value = 1; }
    message FloatList { repeated float value = 1 [packed = true]; }
    message Int64List { repeated int64 value = 1 [packed = true]; }

so this module is a small protobuf wire-format reader/writer for exactly those messages, with
no dependency beyond NumPy. Packed float lists become ``np.frombuffer`` views and packed int64
lists are decoded as varints in bulk with NumPy, so a 3,072-value CIFAR image costs a few array
operations, not 3,072 Python steps. The reader also accepts the unpacked encodings that
protobuf parsers must accept, and skips unknown fields.
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np

__all__ = ["ProtoError", "encode_example", "parse_example"]

BYTES, FLOAT, INT64 = "bytes", "float", "int64"
_KIND_BY_FIELD = {1: BYTES, 2: FLOAT, 3: INT64}
_FIELD_BY_KIND = {v: k for k, v in _KIND_BY_FIELD.items()}
_VARINT, _I64, _LEN, _I32 = 0, 1, 2, 5


class ProtoError(ValueError):
  """The bytes are not a well-formed ``tf.train.Example``."""


def parse_example(buf: bytes) -> dict[str, tuple[str, np.ndarray | list[bytes]]]:
  """Parses one serialized ``tf.train.Example``.

  Args:
    buf: the serialized message.

  Returns:
    ``{feature name: (kind, values)}`` with kind ``'bytes'`` (values: a list of bytes),
    ``'float'`` (float32 array) or ``'int64'`` (int64 array). A feature whose ``kind`` oneof is
    unset has kind ``None`` and an empty list.

  Raises:
    ProtoError: for truncated or malformed input.
  """
  mv = buf if isinstance(buf, bytes) else bytes(buf)  # bytes index faster than memoryview
  out: dict[str, tuple[str, np.ndarray | list[bytes]]] = {}
  for field, start, end in _fields(mv, 0, len(mv), want_len=True):
    if field == 1:  # Example.features
      for ffield, fstart, fend in _fields(mv, start, end, want_len=True):
        if ffield == 1:  # Features.feature map entry
          key, feature = _parse_map_entry(mv, fstart, fend)
          out[key] = feature
  return out


def encode_example(features: Mapping[str, object]) -> bytes:
  """Serializes ``{name: values}`` as a ``tf.train.Example`` (packed, as TensorFlow writes it).

  A value is a ``(kind, values)`` pair, or values alone, whose kind is then inferred: bytes or
  str -> bytes_list, floating -> float_list (float32), integer or bool -> int64_list.
  """
  entries = []
  for key, value in features.items():
    kind, values = value if isinstance(value, tuple) else (None, value)
    if kind is None:
      kind = _infer_kind(values)
    if kind == BYTES:
      items = [values] if isinstance(values, (bytes, str)) else list(np.ravel(np.asarray(values, dtype=object)))
      body = b"".join(_len_field(1, v.encode() if isinstance(v, str) else bytes(v)) for v in items)
    elif kind == FLOAT:
      body = _len_field(1, np.asarray(values, "<f4").ravel().tobytes())
    elif kind == INT64:
      arr = np.asarray(values).ravel().astype(np.int64)
      body = _len_field(1, b"".join(_varint(int(v) & 0xFFFFFFFFFFFFFFFF) for v in arr))
    else:
      raise ValueError(f"feature {key!r}: unknown kind {kind!r}")
    feature = _len_field(_FIELD_BY_KIND[kind], body)
    entries.append(_len_field(1, _len_field(1, key.encode()) + _len_field(2, feature)))
  return _len_field(1, b"".join(entries))


# --------------------------------------------------------------------------------------------
# Wire format.


def _read_varint(mv, pos: int, end: int) -> tuple[int, int]:
  if pos < end:  # fast path: one byte (tags, short lengths, small values)
    b = mv[pos]
    if b < 0x80:
      return b, pos + 1
  result = shift = 0
  while True:
    if pos >= end:
      raise ProtoError("truncated varint")
    b = mv[pos]
    pos += 1
    result |= (b & 0x7F) << shift
    if b < 0x80:
      return result, pos
    shift += 7
    if shift >= 70:
      raise ProtoError("varint longer than 10 bytes")


def _fields(mv: bytes, pos: int, end: int, *, want_len: bool):
  """Yields (field number, start, end) of each length-delimited field; skips other wire types.

  With ``want_len=False`` it yields (field, wire type, value-or-start) for every field instead.
  """
  while pos < end:
    tag, pos = _read_varint(mv, pos, end)
    field, wire = tag >> 3, tag & 7
    if field == 0:
      raise ProtoError("field number 0")
    if wire == _LEN:
      n, pos = _read_varint(mv, pos, end)
      if pos + n > end:
        raise ProtoError(f"field {field}: length {n} runs past the end of its message")
      if want_len:
        yield field, pos, pos + n
      else:
        yield field, wire, (pos, pos + n)
      pos += n
    elif wire == _VARINT:
      value, pos = _read_varint(mv, pos, end)
      if not want_len:
        yield field, wire, value
    elif wire in (_I64, _I32):
      size = 8 if wire == _I64 else 4
      if pos + size > end:
        raise ProtoError(f"field {field}: truncated fixed-width value")
      if not want_len:
        yield field, wire, (pos, pos + size)
      pos += size
    else:  # groups (3, 4) never occur in these messages; 6 and 7 are invalid
      raise ProtoError(f"field {field}: unsupported wire type {wire}")


def _parse_map_entry(mv: bytes, pos: int, end: int):
  key, kind, values = "", None, []
  for field, start, stop in _fields(mv, pos, end, want_len=True):
    if field == 1:
      try:
        key = mv[start:stop].decode("utf-8")
      except UnicodeDecodeError:
        raise ProtoError("feature name is not UTF-8") from None
    elif field == 2:  # Feature
      for kfield, kstart, kend in _fields(mv, start, stop, want_len=True):
        if kfield in _KIND_BY_FIELD:  # oneof: the last one present wins
          kind = _KIND_BY_FIELD[kfield]
          values = _parse_list(mv, kind, kstart, kend)
  return key, (kind, values)


def _parse_list(mv: bytes, kind: str, pos: int, end: int):
  if kind == BYTES:
    return [bytes(mv[s:e]) for f, s, e in _fields(mv, pos, end, want_len=True) if f == 1]
  chunks = []
  for field, wire, value in _fields(mv, pos, end, want_len=False):
    if field != 1:
      continue
    if kind == FLOAT:
      if wire == _LEN:  # packed
        s, e = value
        if (e - s) % 4:
          raise ProtoError(f"packed float list of {e - s} bytes is not a multiple of 4")
        chunks.append(np.frombuffer(mv, "<f4", (e - s) // 4, s))
      elif wire == _I32:
        chunks.append(np.frombuffer(mv, "<f4", 1, value[0]))
      else:
        raise ProtoError(f"float list value with wire type {wire}")
    else:
      if wire == _LEN:
        chunks.append(_decode_packed_varints(mv, *value))
      elif wire == _VARINT:
        chunks.append(np.array([value], np.uint64).view(np.int64))
      else:
        raise ProtoError(f"int64 list value with wire type {wire}")
  dtype = np.float32 if kind == FLOAT else np.int64
  if not chunks:
    return np.zeros(0, dtype)
  arr = chunks[0] if len(chunks) == 1 else np.concatenate(chunks)
  return arr.astype(dtype, copy=False)


def _decode_packed_varints(mv, start: int, end: int) -> np.ndarray:
  """Decodes a packed run of varints to int64 (two's complement, as int64 fields are)."""
  if end - start <= 16:  # a label or two: NumPy's per-call cost would dominate
    values, pos = [], start
    while pos < end:
      v, pos = _read_varint(mv, pos, end)
      values.append(v - (1 << 64) if v >= 1 << 63 else v)
    return np.array(values, np.int64)
  b = np.frombuffer(mv, np.uint8, end - start, start)
  if b.size == 0:
    return np.zeros(0, np.int64)
  if b[-1] & 0x80:
    raise ProtoError("packed varints end in the middle of a value")
  last = b < 0x80  # the final byte of each varint
  if last.all():  # the common case for small values (labels, pixels < 128)
    return b.astype(np.int64)
  ends = np.flatnonzero(last)
  starts = np.concatenate([[0], ends[:-1] + 1])
  if np.any(ends - starts >= 10):
    raise ProtoError("varint longer than 10 bytes")
  group = np.repeat(np.arange(ends.size), ends - starts + 1)
  shift = (np.arange(b.size) - starts[group]).astype(np.uint64) * np.uint64(7)
  parts = (b & 0x7F).astype(np.uint64) << shift
  return np.add.reduceat(parts, starts).view(np.int64)


def _varint(value: int) -> bytes:
  out = bytearray()
  while True:
    b = value & 0x7F
    value >>= 7
    if value:
      out.append(b | 0x80)
    else:
      out.append(b)
      return bytes(out)


def _len_field(field: int, payload: bytes) -> bytes:
  return _varint((field << 3) | _LEN) + _varint(len(payload)) + payload


def _infer_kind(values) -> str:
  if isinstance(values, (bytes, str)):
    return BYTES
  arr = np.asarray(values)
  if arr.dtype.kind in "SUO":
    return BYTES
  if arr.dtype.kind == "f":
    return FLOAT
  if arr.dtype.kind in "iub":
    return INT64
  raise ValueError(f"cannot infer a feature kind for dtype {arr.dtype}")
