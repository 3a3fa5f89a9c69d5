"""FedJAX / TFF SQLite converter: small files in both real formats, converted and checked.

The FedJAX files are written with an independent transcription of
``fedjax.core.serialization.msgpack_serialize`` (below) plus FedJAX's table DDL; the TFF files
hold ``tf.train.Example`` protos from `_tf_example.encode_example`, whose bytes are checked by
hand against the protobuf wire format (TensorFlow is not installed here) and, when the
``protobuf`` package is present, against a runtime-built ``tensorflow.Example`` descriptor.
"""

import os
import sqlite3
import subprocess
import sys
import zlib

import msgpack
import numpy as np
import pytest

from data_pipelines import _fedjax_msgpack, _sqlite_datasets, _tf_example
from data_pipelines import sqlite as conv
from data_pipelines.errors import ConversionError
from fedjaxscale.data.dataset import FederatedDataset

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


# --------------------------------------------------------------------------------------------
# Source builders.


def fedjax_serialize(examples):
  """FedJAX's msgpack_serialize + zlib, transcribed from fedjax/core/serialization.py."""

  def ext_pack(x):
    if isinstance(x, np.ndarray) and x.dtype.hasobject:
      return msgpack.ExtType(4, msgpack.packb((x.shape, list(x.flatten())), use_bin_type=True))
    if isinstance(x, np.ndarray):
      return msgpack.ExtType(1, msgpack.packb((x.shape, x.dtype.name, x.tobytes("C")), use_bin_type=True))
    raise TypeError(type(x))

  return zlib.compress(msgpack.packb(examples, default=ext_pack, strict_types=True))


def write_fedjax(path, clients):
  with sqlite3.connect(path) as c:
    c.execute(
      "CREATE TABLE federated_data (client_id BLOB NOT NULL PRIMARY KEY, "
      "data BLOB NOT NULL, num_examples INTEGER NOT NULL);"
    )
    for cid, ex in clients:
      c.execute(
        "INSERT INTO federated_data VALUES (?, ?, ?);",
        (cid.encode(), fedjax_serialize(ex), len(next(iter(ex.values())))),
      )
  c.close()


def objects(values):
  arr = np.empty(len(values), object)
  arr[:] = values
  return arr


def emnist_clients(rng, sizes=(3, 1, 5)):
  out = []
  for i, n in enumerate(sizes):
    pixels = rng.random((n, 28, 28), dtype=np.float32)
    pixels[:, 0, 0], pixels[:, 0, 1] = 0.0, 1.0
    out.append((f"f{i:04d}_{i:02d}", {"pixels": pixels, "label": rng.integers(0, 62, n).astype(np.int32)}))
  return out


def cifar_clients(rng, sizes=(2, 4)):
  return [
    (
      str(i),
      {
        "image": rng.integers(0, 256, (n, 32, 32, 3)).astype(np.uint8),
        "label": rng.integers(0, 100, n),
        "coarse_label": rng.integers(0, 20, n),
      },
    )
    for i, n in enumerate(sizes)
  ]


SHAKESPEARE = [
  ("THE_TEMPEST_MIRANDA", [b"O, I have suffered", b"With those that I saw suffer!", b""]),
  ("HAMLET_HAMLET", [b"To be, or not to be~ that is the question:\n\xe9"]),
]
STACKOVERFLOW = [
  ("00000001", [b"how do i sort a list ?", b"use sorted ( ) ."]),
  ("00000002", [b"sort a list in python", b"", b"a b c d e f g h i j k l m n o p q r s t u v w x y z"]),
  ("00000003", [b"what is a list ?"]),
]


def so_columns(texts):
  n = len(texts)
  return {
    "tokens": objects(texts),
    "title": objects([b"t"] * n),
    "tags": objects([b"a|b"] * n),
    "type": objects([b"question"] * n),
    "score": np.arange(n, dtype=np.int64),
    "creation_date": objects([b"2018-02-28 19:06:18.34 UTC"] * n),
  }


def tff_examples(dataset, cols):
  """Per-example dicts in TFF's element spec (EMNIST pixels float, CIFAR image int64)."""
  n = len(next(iter(cols.values())))
  return [{k: (v[i] if v.dtype == object else np.asarray(v[i])) for k, v in cols.items()} for i in range(n)]


def convert(tmp_path, fmt, dataset, clients, **kwargs):
  """Writes ``clients`` as the train split (and the first one again as test) and converts."""
  src = tmp_path / f"{dataset}.sqlite"
  if fmt == "fedjax":
    write_fedjax(src, clients)
    test = tmp_path / f"{dataset}_test.sqlite"
    write_fedjax(test, clients[:1])
  else:
    conv.write_tff_sqlite(
      str(src),
      {
        "train": [(c, tff_examples(dataset, ex)) for c, ex in clients],
        "test": [(c, tff_examples(dataset, ex)) for c, ex in clients[:1]],
      },
    )
    test = src
  return conv.convert_sqlite(fmt, dataset, str(src), str(tmp_path / "out"), test=str(test), progress=False, **kwargs)


# --------------------------------------------------------------------------------------------
# Codecs.


def test_msgpack_decoder_reads_fedjax_blobs():
  ex = {
    "pixels": np.arange(6, dtype=np.float32).reshape(2, 3),
    "label": np.array([1, 2]),
    "snippets": objects([b"ab", b""]),
  }
  for blob in (fedjax_serialize(ex), _fedjax_msgpack.serialize_client(ex)):
    got = _fedjax_msgpack.deserialize_client(blob)
    assert sorted(got) == sorted(ex)
    np.testing.assert_array_equal(got["pixels"], ex["pixels"])
    assert got["pixels"].dtype == np.float32 and got["label"].dtype == ex["label"].dtype
    assert list(got["snippets"]) == [b"ab", b""]
  with pytest.raises(_fedjax_msgpack.BlobError, match="zlib"):
    _fedjax_msgpack.deserialize_client(b"not zlib")


def test_example_bytes_match_the_wire_format_by_hand():
  # Example{features{feature{key: "label" value{int64_list{value: [5]}}}}}:
  # Int64List 0a 01 05 (field 1, packed, 1 byte); Feature 1a 03 .. (field 3 = int64_list);
  # map entry 0a 05 "label" 12 05 ..; Features 0a 0e ..; Example 0a 10 ..
  expected = bytes.fromhex("0a100a0e0a05") + b"label" + bytes.fromhex("12051a030a0105")
  assert _tf_example.encode_example({"label": [5]}) == expected
  # float_list is field 2 of Feature, little-endian float32; bytes_list field 1, not packed.
  assert _tf_example.encode_example({"p": [0.5]}) == bytes.fromhex("0a0f0a0d0a0170120812060a040000003f")
  assert _tf_example.encode_example({"s": b"hi"}) == bytes.fromhex("0a0d0a0b0a017312060a040a026869")
  assert _tf_example.parse_example(expected)["label"][0] == "int64"


def test_example_parser_handles_every_encoding():
  ints = np.array([0, 1, 127, 128, 255, 300, 2**40, -1, -(2**63), 2**63 - 1], np.int64)
  floats = np.array([0.0, -1.5, 3e38], np.float32)
  got = _tf_example.parse_example(
    _tf_example.encode_example({"i": ints, "f": floats, "b": ("bytes", [b"x", b"", b"\xff"]), "e": ("int64", [])})
  )
  np.testing.assert_array_equal(got["i"][1], ints)
  np.testing.assert_array_equal(got["f"][1], floats)
  assert got["b"] == ("bytes", [b"x", b"", b"\xff"]) and got["e"][1].size == 0
  # Unpacked repeated scalars (legal on the wire) and an unknown field are accepted.
  unpacked_int = bytes.fromhex("1a0408050807")  # Feature.int64_list{1: 5, 1: 7}
  entry = b"\x0a\x01k" + b"\x12" + bytes([len(unpacked_int)]) + unpacked_int
  msg = b"\x0a" + bytes([len(entry) + 2]) + b"\x0a" + bytes([len(entry)]) + entry + b"\x10\x01"
  np.testing.assert_array_equal(_tf_example.parse_example(msg)["k"][1], [5, 7])
  for bad in (b"\x0a\x05\x0a", b"\x0a\xff", b"\x07"):
    with pytest.raises(_tf_example.ProtoError):
      _tf_example.parse_example(bad)


def test_example_codec_agrees_with_protobuf():
  pytest.importorskip("google.protobuf")
  from google.protobuf import descriptor_pb2, descriptor_pool, message_factory

  F = descriptor_pb2.FieldDescriptorProto
  fdp = descriptor_pb2.FileDescriptorProto(name="example_test.proto", package="tensorflow", syntax="proto3")
  for name, typ in (("BytesList", F.TYPE_BYTES), ("FloatList", F.TYPE_FLOAT), ("Int64List", F.TYPE_INT64)):
    f = fdp.message_type.add(name=name).field.add(name="value", number=1, type=typ, label=F.LABEL_REPEATED)
    if typ != F.TYPE_BYTES:
      f.options.packed = True
  feature = fdp.message_type.add(name="Feature")
  feature.oneof_decl.add(name="kind")
  for num, name in ((1, "BytesList"), (2, "FloatList"), (3, "Int64List")):
    feature.field.add(
      name=name.lower().replace("list", "_list"),
      number=num,
      type=F.TYPE_MESSAGE,
      label=F.LABEL_OPTIONAL,
      type_name=f".tensorflow.{name}",
      oneof_index=0,
    )
  features = fdp.message_type.add(name="Features")
  entry = features.nested_type.add(name="FeatureEntry")
  entry.options.map_entry = True
  entry.field.add(name="key", number=1, type=F.TYPE_STRING, label=F.LABEL_OPTIONAL)
  entry.field.add(name="value", number=2, type=F.TYPE_MESSAGE, label=F.LABEL_OPTIONAL, type_name=".tensorflow.Feature")
  features.field.add(
    name="feature", number=1, type=F.TYPE_MESSAGE, label=F.LABEL_REPEATED, type_name=".tensorflow.Features.FeatureEntry"
  )
  fdp.message_type.add(name="Example").field.add(
    name="features", number=1, type=F.TYPE_MESSAGE, label=F.LABEL_OPTIONAL, type_name=".tensorflow.Features"
  )
  pool = descriptor_pool.DescriptorPool()
  pool.Add(fdp)
  Example = message_factory.GetMessageClass(pool.FindMessageTypeByName("tensorflow.Example"))

  ex = Example()
  ex.features.feature["pixels"].float_list.value.extend([0.0, 0.25, 1.0])
  ex.features.feature["label"].int64_list.value.extend([61, -3, 1 << 50])
  ex.features.feature["snippets"].bytes_list.value.append(b"To be")
  got = _tf_example.parse_example(ex.SerializeToString())
  np.testing.assert_array_equal(got["pixels"][1], [0.0, 0.25, 1.0])
  np.testing.assert_array_equal(got["label"][1], [61, -3, 1 << 50])
  assert got["snippets"] == ("bytes", [b"To be"])
  back = Example.FromString(_tf_example.encode_example({"image": np.arange(200, 260), "label": [7], "tokens": b"a b"}))
  assert list(back.features.feature["image"].int64_list.value) == list(range(200, 260))
  assert list(back.features.feature["tokens"].bytes_list.value) == [b"a b"]


# --------------------------------------------------------------------------------------------
# Conversions.


def check_ids_and_sizes(out, clients, fmt, rows_per_client=None):
  """FedJAX files keep row order; TFF clients are listed sorted by id (as TFF lists them)."""
  train = FederatedDataset.open(out["train"].path)
  sizes = dict(zip([c for c, _ in clients], rows_per_client or [len(next(iter(ex.values()))) for _, ex in clients]))
  ids = [c for c, _ in clients]
  if fmt == "tff":
    ids = sorted(ids)
  assert list(train.client_ids) == ids
  np.testing.assert_array_equal(train.client_sizes, [sizes[c] for c in ids])
  assert list(FederatedDataset.open(out["test"].path).client_ids) == [clients[0][0]]
  return train


@pytest.mark.parametrize("fmt", conv.FORMATS)
def test_emnist(tmp_path, fmt):
  clients = emnist_clients(np.random.default_rng(0))
  out = convert(tmp_path, fmt, "emnist", clients)
  train = check_ids_and_sizes(out, clients, fmt)
  for cid, ex in clients:
    got = train.client(cid)
    assert got["x"].dtype == np.uint8 and got["x"].shape[1:] == (28, 28)
    np.testing.assert_array_equal(got["x"], np.round(ex["pixels"] * 255).astype(np.uint8))
    assert got["x"][0, 0, 0] == 0 and got["x"][0, 0, 1] == 255  # background (1.0) is 255
    assert got["y"].dtype == np.int32
    np.testing.assert_array_equal(got["y"], ex["label"])
  assert train.label_names == list("0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz")
  assert train.meta["provenance"]["source_format"] == f"{fmt}_sqlite"
  inverted = conv.convert_sqlite(
    fmt, "emnist", str(tmp_path / "emnist.sqlite"), str(tmp_path / "inv"), emnist_invert=True, progress=False
  )
  np.testing.assert_array_equal(
    inverted["train"].client(clients[0][0])["x"], np.round((1 - clients[0][1]["pixels"]) * 255).astype(np.uint8)
  )


@pytest.mark.parametrize("fmt", conv.FORMATS)
def test_cifar100(tmp_path, fmt):
  clients = cifar_clients(np.random.default_rng(1))
  out = convert(tmp_path, fmt, "cifar100", clients)
  train = check_ids_and_sizes(out, clients, fmt)
  for cid, ex in clients:
    got = train.client(cid)
    assert got["x"].dtype == np.uint8 and got["x"].shape[1:] == (32, 32, 3)
    np.testing.assert_array_equal(got["x"], ex["image"])
    np.testing.assert_array_equal(got["y"], ex["label"])
    np.testing.assert_array_equal(got["coarse_label"], ex["coarse_label"])
    assert got["y"].dtype == got["coarse_label"].dtype == np.int32
  assert train.label_names[:3] == ["apple", "aquarium_fish", "baby"]
  assert len(train.label_names) == 100


def reference_shakespeare(snippets, seq_len):
  """FedJAX's shakespeare.preprocess_client, transcribed as a plain loop."""
  table = {c: 3 + i for i, c in enumerate(_sqlite_datasets.SHAKESPEARE_SYMBOLS)}
  joined = []
  for s in snippets:
    joined += [1] + [table.get(c, 89) for c in s] + [2]
  x, y = joined[:-1], joined[1:]
  rows = -(-len(x) // seq_len)
  pad = lambda v: np.array(v + [0] * (rows * seq_len - len(v)), np.int32).reshape(rows, seq_len)
  return pad(x), pad(y)


@pytest.mark.parametrize("fmt", conv.FORMATS)
def test_shakespeare(tmp_path, fmt):
  clients = [(c, {"snippets": objects(s)}) for c, s in SHAKESPEARE]
  out = convert(tmp_path, fmt, "shakespeare", clients, seq_len=8)
  expected = {c: reference_shakespeare(s, 8) for c, s in SHAKESPEARE}
  train = check_ids_and_sizes(out, clients, fmt, [len(expected[c][0]) for c, _ in SHAKESPEARE])
  for cid, (x, y) in expected.items():
    np.testing.assert_array_equal(train.client(cid)["x"], x)
    np.testing.assert_array_equal(train.client(cid)["y"], y)
  # FedJAX's docstring example: [b'ABCD', b'E'], length 3.
  got = _sqlite_datasets.shakespeare({"snippets": objects([b"ABCD", b"E"])}, "w", seq_len=3)
  x, y = got["x"], got["y"]
  ids = dict(zip(b"ABCDE", _sqlite_datasets._SHAKESPEARE_TABLE[list(b"ABCDE")]))
  A, B, C, D, E = (ids[c] for c in b"ABCDE")
  np.testing.assert_array_equal(x, [[1, A, B], [C, D, 2], [1, E, 0]])
  np.testing.assert_array_equal(y, [[A, B, C], [D, 2, 1], [E, 2, 0]])
  names = train.label_names
  assert len(names) == 90 and names[:3] == ["<pad>", "<bos>", "<eos>"] and names[89] == "<oov>"
  assert names[ids[ord("A")]] == "A" and train.meta["provenance"]["source_examples"] == 4


def reference_so(text, vocab, seq_len):
  ids = [1] + [vocab.index(w) + 3 if w in vocab else len(vocab) + 3 for w in text.decode().split(" ")] + [2]
  x, y = ids[:-1][:seq_len], ids[1:][:seq_len]
  return x + [0] * (seq_len - len(x)), y + [0] * (seq_len - len(y))


@pytest.mark.parametrize("fmt", conv.FORMATS)
def test_stackoverflow_vocab_from_train(tmp_path, fmt):
  clients = [(c, so_columns(t)) for c, t in STACKOVERFLOW]
  out = convert(tmp_path, fmt, "stackoverflow", clients, vocab_size=4)
  # The vocabulary: words by the number of clients containing them, ties by word.
  counts = {}
  for _, texts in STACKOVERFLOW:
    for w in set(b" ".join(texts).decode().split(" ")) - {""}:
      counts[w] = counts.get(w, 0) + 1
  vocab = sorted(counts, key=lambda w: (-counts[w], w.encode()))[:4]
  train = check_ids_and_sizes(out, clients, fmt)
  assert train.label_names == ["<pad>", "<bos>", "<eos>", *vocab, "<oov>"]
  for cid, texts in STACKOVERFLOW:
    got = train.client(cid)
    for row, text in enumerate(texts):
      x, y = reference_so(text, vocab, 20)
      np.testing.assert_array_equal(got["x"][row], x)
      np.testing.assert_array_equal(got["y"][row], y)
  assert train.meta["provenance"]["oov"] == 7


def test_stackoverflow_vocab_file(tmp_path):
  vocab_file = tmp_path / "stackoverflow.word_count"
  vocab_file.write_text("list 3\nsort 2\n? 2\nhow 1\n")
  clients = [(c, so_columns(t)) for c, t in STACKOVERFLOW]
  out = convert(tmp_path, "fedjax", "stackoverflow", clients, vocab_size=3, vocab_file=str(vocab_file), seq_len=5)
  got = out["train"].client("00000001")
  # 'how do i sort a list ?' -> BOS how do i sort | y: how do i sort a  (OOV = 3 + 3 = 6)
  np.testing.assert_array_equal(got["x"][0], [1, 6, 6, 6, 4])
  np.testing.assert_array_equal(got["y"][0], [6, 6, 6, 4, 6])
  np.testing.assert_array_equal(out["train"].client("00000002")["x"][1], [1, 6, 0, 0, 0])
  np.testing.assert_array_equal(out["train"].client("00000002")["y"][1], [6, 2, 0, 0, 0])
  assert out["train"].label_names[3:6] == ["list", "sort", "?"]


def test_cli_converts_and_refuses_to_overwrite(tmp_path):
  src = tmp_path / "train.sqlite"
  write_fedjax(src, emnist_clients(np.random.default_rng(2), (2, 2)))
  cmd = [
    sys.executable,
    "-m",
    "data_pipelines.sqlite",
    "--format=fedjax",
    "--dataset=emnist",
    f"--train={src}",
    f"--output_dir={tmp_path / 'out'}",
  ]
  run = lambda: subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=120)
  r = run()
  assert r.returncode == 0, r.stderr
  assert "train: 2 clients / 4 examples / 62 classes" in r.stdout
  r = run()
  assert r.returncode == 2 and "already holds a dataset" in r.stderr
  assert r.stderr.count("\n") == 1  # one line, no traceback
  with pytest.raises(ConversionError, match="already holds a dataset"):
    conv.convert_sqlite("fedjax", "emnist", str(src), str(tmp_path / "out"), progress=False)
  again = conv.convert_sqlite("fedjax", "emnist", str(src), str(tmp_path / "out"), overwrite=True, progress=False)
  assert again["train"].num_examples == 4
  assert os.listdir(tmp_path / "out") == ["train"]  # the spool directory is gone


# --------------------------------------------------------------------------------------------
# Bad input.


def raises(match, fmt, dataset, path, tmp_path, **kwargs):
  with pytest.raises(ConversionError, match=match):
    conv.convert_sqlite(fmt, dataset, str(path), str(tmp_path / "bad_out"), progress=False, **kwargs)


def test_other_schema_names_file_and_tables(tmp_path):
  path = tmp_path / "other.sqlite"
  with sqlite3.connect(path) as c:
    c.execute("CREATE TABLE users (id TEXT, blob BLOB)")
  c.close()
  for fmt, expected in (("fedjax", "federated_data"), ("tff", "examples")):
    with pytest.raises(ConversionError) as e:
      conv.convert_sqlite(fmt, "emnist", str(path), str(tmp_path / "o"), progress=False)
    msg = str(e.value)
    assert str(path) in msg and "users(id, blob)" in msg and expected in msg
  # A TFF file given as FedJAX and the reverse.
  tff = tmp_path / "tff.sqlite"
  conv.write_tff_sqlite(str(tff), {"train": [("a", [{"snippets": b"x"}])]})
  raises(r"missing federated_data.*Found: client_metadata", "fedjax", "shakespeare", tff, tmp_path)
  fj = tmp_path / "fj.sqlite"
  write_fedjax(fj, [("a", {"snippets": objects([b"x"])})])
  raises(r"not a TFF SQLite file: missing examples, client_metadata", "tff", "shakespeare", fj, tmp_path)
  (tmp_path / "text.sqlite").write_text("hello, not a database " * 20)
  raises("not an SQLite database", "fedjax", "emnist", tmp_path / "text.sqlite", tmp_path)
  raises("no such file", "fedjax", "emnist", tmp_path / "missing.sqlite", tmp_path)
  assert not (tmp_path / "missing.sqlite").exists()


def test_client_without_examples(tmp_path):
  path = tmp_path / "empty.sqlite"
  write_fedjax(path, [("ok", {"snippets": objects([b"a"])}), ("lonely", {"snippets": objects([])})])
  raises(r"empty.sqlite: client 'lonely': has no examples", "fedjax", "shakespeare", path, tmp_path)
  tff = tmp_path / "empty_tff.sqlite"
  conv.write_tff_sqlite(str(tff), {"train": [("ok", [{"snippets": b"a"}]), ("lonely", [])]})
  raises(r"split 'train': client 'lonely': has no examples", "tff", "shakespeare", tff, tmp_path)
  assert not (tmp_path / "bad_out" / "train").exists()


def test_bad_rows_name_the_client(tmp_path):
  rng = np.random.default_rng(3)
  clients = emnist_clients(rng, (2, 2))
  clients[1][1]["label"][1] = 62
  path = tmp_path / "label.sqlite"
  write_fedjax(path, clients)
  raises(r"client 'f0001_01': label 62 of example 1 is outside the 62 classes", "fedjax", "emnist", path, tmp_path)
  raises(
    r"label \d+ of example \d+ is outside the 10 classes", "fedjax", "emnist", path, tmp_path, emnist_only_digits=True
  )
  path = tmp_path / "count.sqlite"
  write_fedjax(path, emnist_clients(rng, (2,)))
  with sqlite3.connect(path) as c:
    c.execute("UPDATE federated_data SET num_examples = 5")
  c.close()
  raises(r"client 'f0000_00': num_examples is 5 but its data holds 2", "fedjax", "emnist", path, tmp_path)
  with sqlite3.connect(path) as c:
    c.execute("UPDATE federated_data SET data = x'00112233'")
  c.close()
  raises(r"client 'f0000_00': data blob: not zlib", "fedjax", "emnist", path, tmp_path)
  tff = tmp_path / "tff.sqlite"
  conv.write_tff_sqlite(str(tff), {"train": [("c1", [{"snippets": b"ok"}])]})
  with sqlite3.connect(tff) as c:
    c.execute("INSERT INTO examples VALUES ('train', 'c0', x'0a05')")
    c.execute("UPDATE examples SET serialized_example_proto = x'0aff' WHERE client_id = 'c1'")
  c.close()
  raises(r"client 'c0' has examples but no client_metadata row", "tff", "shakespeare", tff, tmp_path)
  with sqlite3.connect(tff) as c:
    c.execute("DELETE FROM examples WHERE client_id = 'c0'")
  c.close()
  raises(r"client 'c1': examples row 1: not a tf.train.Example", "tff", "shakespeare", tff, tmp_path)
  raises(
    r"no clients in split 'test' \(splits in client_metadata: \['train'\]\)",
    "tff",
    "shakespeare",
    tff,
    tmp_path,
    train_split="test",
  )
  tff2 = tmp_path / "tff2.sqlite"
  conv.write_tff_sqlite(str(tff2), {"train": [("c1", [{"pixels": np.zeros(784, np.float32), "label": 3.0}])]})
  raises(
    r"client 'c1': examples row 1: feature 'label' is 1 x float, expected 1 x int64", "tff", "emnist", tff2, tmp_path
  )
