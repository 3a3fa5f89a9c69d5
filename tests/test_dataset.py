"""Tests of the on-disk federated dataset layout: round trips, lookups, and every validation
error on open (each made by corrupting a tiny written dataset)."""

import ast
import json
import os
import pathlib

import hypothesis
import hypothesis.strategies as st
import numpy as np
import pytest

from fedjaxscale.data import dataset as dataset_lib
from fedjaxscale.data.dataset import (
  DatasetError,
  FederatedDataset,
  open_splits,
  write_dataset,
  write_dataset_from_clients,
)

IDS = ["alice", "bob", "carol"]
SIZES = [2, 0, 3]


def _features():
  return {
    "x": np.arange(10, dtype=np.float32).reshape(5, 2),
    "y": np.array([0, 1, 1, 0, 2], np.int32),
    "tag": np.array(["a", "bb", "c", "dd", "e"]),
  }


@pytest.fixture
def ds_path(tmp_path):
  path = tmp_path / "train"
  write_dataset(
    path,
    IDS,
    _features(),
    SIZES,
    label_names=["zero", "one", "two"],
    provenance={"generator": "test", "alpha": np.float32(0.5), "n": np.int64(3)},
  )
  return path


# ---------------------------------------------------------------------------------------------
# Round trip and lookups.


def test_round_trip(ds_path):
  ds = FederatedDataset.open(ds_path)
  assert ds.num_clients == 3 and ds.num_examples == 5
  assert list(ds.client_ids) == IDS
  np.testing.assert_array_equal(ds.offsets, [0, 2, 2, 5])
  assert ds.offsets.dtype == np.int64
  np.testing.assert_array_equal(ds.client_sizes, SIZES)
  for name, want in _features().items():
    assert isinstance(ds.features[name], np.memmap)
    np.testing.assert_array_equal(ds.features[name], want)
  assert ds.feature_specs == {
    "x": (np.dtype("float32"), (2,)),
    "y": (np.dtype("int32"), ()),
    "tag": (np.dtype("<U2"), ()),
  }
  assert ds.label_names == ["zero", "one", "two"]
  assert ds.meta["provenance"] == {"generator": "test", "alpha": 0.5, "n": 3}
  assert ds.meta["features"]["x"] == {"dtype": "float32", "shape": [2]}
  # client_ids loads without pickle.
  ids = np.load(ds_path / "client_ids.npy", allow_pickle=False)
  assert ids.dtype.kind == "U"
  assert "train" in repr(ds) and "3 clients" in repr(ds)


def test_client_slices_are_views(ds_path):
  ds = FederatedDataset.open(ds_path)
  carol = ds.client("carol")
  np.testing.assert_array_equal(carol["x"], _features()["x"][2:5])
  assert np.shares_memory(carol["x"], ds.features["x"])
  np.testing.assert_array_equal(ds.client(2)["y"], [1, 0, 2])
  np.testing.assert_array_equal(ds.client(np.int64(0))["y"], [0, 1])
  assert ds.client("bob")["x"].shape == (0, 2)
  got = ds.clients(["carol", 0])
  np.testing.assert_array_equal(got[0]["tag"], ["c", "dd", "e"])
  np.testing.assert_array_equal(got[1]["tag"], ["a", "bb"])


def test_client_index_and_rows(ds_path):
  ds = FederatedDataset.open(ds_path)
  np.testing.assert_array_equal(ds.client_index(["carol", "alice", "carol"]), [2, 0, 2])
  assert ds.client_index("bob") == 1
  assert ds.client_index([]).shape == (0,)
  with pytest.raises(DatasetError, match="unknown client id.*'dave'.*'zed'"):
    ds.client_index(["alice", "zed", "dave"])
  with pytest.raises(DatasetError, match="unknown client id"):
    ds.client("nobody")
  with pytest.raises(DatasetError, match="out of range"):
    ds.client(3)
  with pytest.raises(DatasetError, match="out of range"):
    ds.client(-1)
  got = ds.rows([4, 0])
  np.testing.assert_array_equal(got["y"], [2, 0])
  assert not isinstance(got["x"], np.memmap)
  rows, sizes = ds.client_rows(["carol", "bob", "alice"])
  np.testing.assert_array_equal(rows, [2, 3, 4, 0, 1])
  np.testing.assert_array_equal(sizes, [3, 0, 2])
  rows, sizes = ds.client_rows([])
  assert rows.shape == (0,) and sizes.shape == (0,)


def test_subset(ds_path):
  ds = FederatedDataset.open(ds_path)
  sub = ds.subset(["carol", "alice"])
  assert sub.path is None and sub.num_clients == 2 and sub.num_examples == 5
  assert list(sub.client_ids) == ["carol", "alice"]
  np.testing.assert_array_equal(sub.client("alice")["y"], [0, 1])
  np.testing.assert_array_equal(sub.client(0)["y"], [1, 0, 2])
  assert sub.label_names == ds.label_names
  with pytest.raises(DatasetError, match="more than once"):
    ds.subset([0, 0])


def test_write_from_clients(tmp_path):
  clients = {
    "a": {"x": np.ones((2, 3), np.float32), "y": np.array([1, 2])},
    "b": {"x": np.zeros((1, 3), np.float32), "y": np.array([3])},
  }
  ds = write_dataset_from_clients(tmp_path / "m", clients, provenance={"source": "dict"})
  np.testing.assert_array_equal(ds.client_sizes, [2, 1])
  np.testing.assert_array_equal(ds.features["y"], [1, 2, 3])
  ds2 = write_dataset_from_clients(tmp_path / "p", list(clients.items()))
  for k in ("x", "y"):
    np.testing.assert_array_equal(ds.features[k], ds2.features[k])
  bad = dict(clients, c={"x": np.zeros((1, 3), np.float64), "y": np.array([0])})
  with pytest.raises(DatasetError, match="client 'c' feature 'x'"):
    write_dataset_from_clients(tmp_path / "bad", bad)
  with pytest.raises(DatasetError, match="has 2 rows"):
    write_dataset_from_clients(tmp_path / "bad", {"a": {"x": np.zeros((1, 3)), "y": [1, 2]}})
  with pytest.raises(DatasetError, match="features"):
    write_dataset_from_clients(tmp_path / "bad", dict(clients, c={"x": np.zeros((1, 3))}))


def test_empty_dataset(tmp_path):
  ds = write_dataset(tmp_path / "e", [], {"x": np.zeros((0, 4), np.float32)}, [])
  assert ds.num_clients == 0 and ds.num_examples == 0
  np.testing.assert_array_equal(ds.offsets, [0])


def test_open_splits(tmp_path):
  for split in ("train", "test"):
    write_dataset(tmp_path / split, IDS, _features(), SIZES)
  (tmp_path / "notes").mkdir()
  splits = open_splits(tmp_path)
  assert sorted(splits) == ["test", "train"]
  with pytest.raises(DatasetError, match="no split"):
    open_splits(tmp_path / "notes")
  with pytest.raises(DatasetError, match="not a directory"):
    open_splits(tmp_path / "missing")


@hypothesis.settings(max_examples=20, deadline=None)
@hypothesis.given(sizes=st.lists(st.integers(0, 6), min_size=1, max_size=8), seed=st.integers(0, 2**16))
def test_slicing_matches_per_client_arrays(tmp_path_factory, sizes, seed):
  rng = np.random.default_rng(seed)
  per_client = [rng.normal(size=(n, 3)).astype(np.float32) for n in sizes]
  ids = [f"c{i}" for i in range(len(sizes))]
  ds = write_dataset(tmp_path_factory.mktemp("h") / "d", ids, {"x": np.concatenate(per_client)}, sizes)
  for i, want in enumerate(per_client):
    np.testing.assert_array_equal(ds.client(ids[i])["x"], want)
  order = rng.permutation(len(sizes))
  rows, got_sizes = ds.client_rows(order)
  np.testing.assert_array_equal(
    ds.rows(rows)["x"].reshape(-1, 3), np.concatenate([per_client[i] for i in order]).reshape(-1, 3)
  )
  np.testing.assert_array_equal(got_sizes, np.asarray(sizes)[order])


# ---------------------------------------------------------------------------------------------
# Writer: refusals, atomicity, input checks.


def test_refuses_to_overwrite(ds_path):
  with pytest.raises(DatasetError, match="already holds a dataset"):
    write_dataset(ds_path, ["z"], {"y": np.array([7])}, [1])
  ds = write_dataset(ds_path, ["z"], {"y": np.array([7])}, [1], overwrite=True)
  assert list(ds.client_ids) == ["z"] and sorted(os.listdir(ds_path)) == [
    "client_ids.npy",
    "client_offsets.npy",
    "meta.json",
    "y.npy",
  ]
  assert not [e for e in os.listdir(ds_path.parent) if e.startswith(".")]


def test_refuses_foreign_or_partial_directories(tmp_path):
  foreign = tmp_path / "foreign"
  foreign.mkdir()
  (foreign / "notes.txt").write_text("mine")
  with pytest.raises(DatasetError, match="non-dataset entries"):
    write_dataset(foreign, ["a"], {"y": np.array([1])}, [1], overwrite=True)
  assert (foreign / "notes.txt").exists()
  partial = tmp_path / "partial"
  partial.mkdir()
  np.save(partial / "y.npy", np.array([1]))
  with pytest.raises(DatasetError, match="no meta.json"):
    write_dataset(partial, ["a"], {"y": np.array([1])}, [1])
  write_dataset(partial, ["a"], {"y": np.array([1])}, [1], overwrite=True)
  (tmp_path / "file").write_text("")
  with pytest.raises(DatasetError, match="not a directory"):
    write_dataset(tmp_path / "file", ["a"], {"y": np.array([1])}, [1])


@pytest.mark.parametrize("existing", [False, True])
def test_failed_write_leaves_nothing_valid(tmp_path, monkeypatch, existing):
  path = tmp_path / "d"
  if existing:
    write_dataset(path, IDS, _features(), SIZES)
  real_save = np.save

  def failing_save(file, arr, **kw):
    if os.fspath(file).endswith("y.npy"):
      raise OSError("disk full")
    real_save(file, arr, **kw)

  monkeypatch.setattr(np, "save", failing_save)
  with pytest.raises(OSError, match="disk full"):
    write_dataset(path, ["q"], {"x": np.zeros((1, 2)), "y": np.zeros(1)}, [1], overwrite=True)
  monkeypatch.undo()
  assert os.listdir(tmp_path) == (["d"] if existing else [])
  if existing:  # The old dataset is untouched.
    assert list(FederatedDataset.open(path).client_ids) == IDS


@pytest.mark.parametrize(
  "kwargs, match",
  [
    (dict(client_sizes=[2, 0, 2]), "client_sizes sum to 4"),
    (dict(client_sizes=[2, 3]), "3 client ids but 2 client sizes"),
    (dict(client_sizes=[3, -1, 3]), "non-negative"),
    (dict(client_sizes=[2.0, 0.0, 3.0]), "integer"),
    (dict(client_ids=["a", "b", "a"]), "duplicate client id.*'a'"),
    (dict(client_ids=[1, 2, 3]), "sequence of str"),
    (dict(features={}), "non-empty"),
    (dict(features={"x": np.array([{}] * 5)}), "cannot be memory-mapped"),
    (dict(features={"client_ids": np.zeros(5)}), "bad feature name"),
    (dict(features={"a/b": np.zeros(5)}), "bad feature name"),
    (dict(features={"x": np.float32(1)}), "0-d"),
    (dict(provenance={"f": object()}), "not JSON-serializable"),
  ],
)
def test_writer_rejects_bad_input(tmp_path, kwargs, match):
  args = dict(client_ids=IDS, features=_features(), client_sizes=SIZES)
  args.update(kwargs)
  with pytest.raises(DatasetError, match=match):
    write_dataset(tmp_path / "d", **args)
  assert not os.path.exists(tmp_path / "d")


# ---------------------------------------------------------------------------------------------
# Validation on open: one corruption per problem, each naming the file.


def _edit_meta(path, fn):
  meta = json.loads((path / "meta.json").read_text())
  fn(meta)
  (path / "meta.json").write_text(json.dumps(meta))


def _truncate(file, keep):
  data = file.read_bytes()
  file.write_bytes(data[:keep] if keep >= 0 else data[: len(data) + keep])


def _append(file, extra):
  file.write_bytes(file.read_bytes() + extra)


def _without_key(key):
  return lambda p: _edit_meta(p, lambda m: m.pop(key))


CORRUPTIONS = {
  "missing meta": (lambda p: (p / "meta.json").unlink(), "meta.json", "missing"),
  "meta not json": (lambda p: (p / "meta.json").write_text('{"format_version": 1,'), "meta.json", "not valid JSON"),
  "meta not object": (lambda p: (p / "meta.json").write_text("[1, 2]"), "meta.json", "JSON object"),
  "meta lacks features": (_without_key("features"), "meta.json", "key.*'features'"),
  "meta lacks num_clients": (_without_key("num_clients"), "meta.json", "'num_clients'"),
  "meta newer format": (lambda p: _edit_meta(p, lambda m: m.update(format_version=99)), "meta.json", "newer"),
  "meta bad dtype": (
    lambda p: _edit_meta(p, lambda m: m["features"]["x"].update(dtype="float99")),
    "meta.json",
    "unknown dtype",
  ),
  "meta bad shape": (
    lambda p: _edit_meta(p, lambda m: m["features"]["x"].update(shape="2")),
    "meta.json",
    "shape must be",
  ),
  "missing client_ids": (lambda p: (p / "client_ids.npy").unlink(), "client_ids.npy", "missing"),
  "missing client_offsets": (lambda p: (p / "client_offsets.npy").unlink(), "client_offsets.npy", "missing"),
  "missing feature": (lambda p: (p / "y.npy").unlink(), "y.npy", "missing"),
  "truncated feature data": (lambda p: _truncate(p / "x.npy", -4), "x.npy", "truncated"),
  "truncated feature header": (lambda p: _truncate(p / "x.npy", 20), "x.npy", "truncated"),
  "trailing bytes": (lambda p: _append(p / "x.npy", b"\0" * 8), "x.npy", "header describes"),
  "not an npy file": (lambda p: (p / "y.npy").write_bytes(b"hello world"), "y.npy", "unreadable"),
  "truncated offsets": (lambda p: _truncate(p / "client_offsets.npy", -3), "client_offsets.npy", "truncated"),
  "pickled client ids": (
    lambda p: np.save(p / "client_ids.npy", np.array(IDS, object), allow_pickle=True),
    "client_ids.npy",
    "unreadable",
  ),
  "client ids not strings": (lambda p: np.save(p / "client_ids.npy", np.arange(3)), "client_ids.npy", "unicode"),
  "duplicate client ids": (
    lambda p: np.save(p / "client_ids.npy", np.array(["alice", "bob", "alice"])),
    "client_ids.npy",
    "duplicate client id.*'alice'",
  ),
  "client ids count": (
    lambda p: np.save(p / "client_ids.npy", np.array(["a", "b"])),
    "client_ids.npy",
    "num_clients is 3",
  ),
  "offsets not from 0": (
    lambda p: np.save(p / "client_offsets.npy", np.array([1, 2, 2, 5], np.int64)),
    "client_offsets.npy",
    "start at 0",
  ),
  "offsets decreasing": (
    lambda p: np.save(p / "client_offsets.npy", np.array([0, 3, 2, 5], np.int64)),
    "client_offsets.npy",
    "non-decreasing",
  ),
  "offsets wrong length": (
    lambda p: np.save(p / "client_offsets.npy", np.array([0, 2, 5], np.int64)),
    "client_offsets.npy",
    "expected num_clients \\+ 1",
  ),
  "offsets wrong end": (
    lambda p: np.save(p / "client_offsets.npy", np.array([0, 2, 2, 4], np.int64)),
    "client_offsets.npy",
    "end at 4",
  ),
  "offsets not integer": (
    lambda p: np.save(p / "client_offsets.npy", np.array([0.0, 2.0, 2.0, 5.0])),
    "client_offsets.npy",
    "integer",
  ),
  "unequal rows": (lambda p: np.save(p / "y.npy", np.zeros(4, np.int32)), "y.npy", "equal row counts"),
  "rows disagree with offsets": (
    lambda p: [np.save(p / f"{k}.npy", v[:4]) for k, v in _features().items()],
    "x.npy",
    "end at 5",
  ),
  "dtype mismatch": (
    lambda p: np.save(p / "x.npy", np.zeros((5, 2), np.float64)),
    "x.npy",
    "dtype float64 does not match meta.json \\(float32\\)",
  ),
  "shape mismatch": (
    lambda p: np.save(p / "x.npy", np.zeros((5, 3), np.float32)),
    "x.npy",
    "shape \\(3,\\) does not match",
  ),
  "0-d feature": (lambda p: np.save(p / "y.npy", np.int32(1)), "y.npy", "0-d"),
}


@pytest.mark.parametrize("name", list(CORRUPTIONS))
def test_open_rejects_corruption(ds_path, name):
  corrupt, file, problem = CORRUPTIONS[name]
  FederatedDataset.open(ds_path)  # Valid before.
  corrupt(ds_path)
  with pytest.raises(DatasetError, match=problem) as info:
    FederatedDataset.open(ds_path)
  assert str(info.value).startswith(os.path.join(os.fspath(ds_path), file) + ":"), info.value


def test_dataset_error_is_value_error():
  assert issubclass(DatasetError, ValueError)


def test_open_reads_headers_only(tmp_path):
  # A large (sparse) feature opens and without reading its contents: open validates
  # headers and sizes, not data.
  path = tmp_path / "big"
  write_dataset(path, ["a"], {"x": np.zeros((1, 1024), np.float32)}, [1])
  rows = 2**14
  header = np.lib.format.open_memmap(path / "x.npy", mode="w+", dtype=np.float32, shape=(rows, 1024))
  del header
  np.save(path / "client_offsets.npy", np.array([0, rows], np.int64))
  _edit_meta(path, lambda m: m.update(num_examples=rows))
  ds = FederatedDataset.open(path)
  assert ds.features["x"].shape == (rows, 1024) and ds.client("a")["x"].shape[0] == rows


def test_module_does_not_import_jax():
  for module in ("dataset.py", "synthetic.py"):
    tree = ast.parse(pathlib.Path(dataset_lib.__file__).with_name(module).read_text())
    names = [a.name for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names]
    names += [n.module or "" for n in ast.walk(tree) if isinstance(n, ast.ImportFrom)]
    assert not [m for m in names if m.split(".")[0] in ("jax", "jaxlib", "flax", "optax")]
