"""LEAF JSON converter: real-format sources written here, converted, reopened and compared."""

import json
import os
import subprocess
import sys

import numpy as np
import pytest

from data_pipelines import leaf
from data_pipelines.errors import ConversionError
from fedjaxscale.data.dataset import FederatedDataset

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def write_leaf_file(path, users):
  """Writes one LEAF JSON file exactly as LEAF's split_data.py does (json.dump, no indent)."""
  obj = {
    "users": [u for u, _, _ in users],
    "num_samples": [len(y) for _, _, y in users],
    "user_data": {u: {"x": x, "y": y} for u, x, y in users},
  }
  os.makedirs(os.path.dirname(path), exist_ok=True)
  with open(path, "w") as f:
    json.dump(obj, f)


def write_split(root, split, files):
  """files: list of lists of (user, x, y); file i becomes ``all_data_i_..._<split>_i.json``."""
  for i, users in enumerate(files):
    write_leaf_file(os.path.join(root, split, f"all_data_{i}_niid_0_keep_0_{split}_9.json"), users)


def femnist_user(rng, n):
  # LEAF's FEMNIST floats are k/255 with background 1.0; include off-grid values for rounding.
  x = rng.integers(0, 256, (n, 784)) / 255.0
  x[:, :5] = [0.0, 1.0, 0.5, 0.1234, 0.998]
  return x.tolist(), rng.integers(0, 62, n).tolist()


@pytest.fixture
def femnist_source(tmp_path):
  rng = np.random.default_rng(0)
  src = tmp_path / "femnist" / "data"
  train = [
    [("f0001_12", *femnist_user(rng, 3)), ("f0000_07", *femnist_user(rng, 2))],
    [("f0100_33", *femnist_user(rng, 4))],
  ]
  test = [[("f0001_12", *femnist_user(rng, 1))], [("f0100_33", *femnist_user(rng, 2))]]
  write_split(src, "train", train)
  write_split(src, "test", test)
  return str(src), {"train": train, "test": test}


@pytest.mark.parametrize("num_workers", [1, 2])
def test_femnist_matches_source(femnist_source, tmp_path, num_workers):
  src, expected = femnist_source
  out = leaf.convert_leaf(src, str(tmp_path / "out"), "femnist", num_workers=num_workers, verbose=False)
  for split, files in expected.items():
    ds = FederatedDataset.open(tmp_path / "out" / split)
    users = [u for f in files for u in f]
    assert list(ds.client_ids) == [u for u, _, _ in users]  # file order, then users order
    assert list(ds.client_sizes) == [len(y) for _, _, y in users]
    assert ds.feature_specs["x"] == (np.dtype(np.uint8), (28, 28))
    assert ds.feature_specs["y"] == (np.dtype(np.int32), ())
    assert ds.label_names == list("0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz")
    for u, x, y in users:
      c = ds.client(u)
      np.testing.assert_array_equal(c["x"], np.rint(np.asarray(x) * 255).astype(np.uint8).reshape(-1, 28, 28))
      np.testing.assert_array_equal(c["y"], y)
    assert ds.meta["provenance"]["converter"] == "data_pipelines.leaf"
    assert out[split].num_examples == ds.num_examples
  c = FederatedDataset.open(tmp_path / "out" / "train").client("f0001_12")
  assert list(c["x"][0, 0, :5]) == [0, 255, 128, 31, 254]


def test_shakespeare_uses_leaf_vocabulary(tmp_path):
  assert len(leaf.ALL_LETTERS) == 80
  rng = np.random.default_rng(1)
  letters = np.array(list(leaf.ALL_LETTERS))

  def user(n):
    xs = ["".join(rng.choice(letters, 80)) for _ in range(n)]
    return xs, [str(rng.choice(letters)) for _ in range(n)]

  train = [[("THE_TEMPEST_PROSPERO", *user(3))], [("HAMLET_OPHELIA", *user(2)), ("KING_LEAR_FOOL", *user(1))]]
  test = [[("THE_TEMPEST_PROSPERO", *user(1)), ("KING_LEAR_FOOL", *user(1))]]
  line = "To be, or not to be: that is the question!\n\"&'()-.;>?[]}"
  train[0][0][1][0] = line + "z" * (80 - len(line))
  write_split(tmp_path / "src", "train", train)
  write_split(tmp_path / "src", "test", test)
  leaf.convert_leaf(str(tmp_path / "src"), str(tmp_path / "out"), "shakespeare", verbose=False)
  for split, files in (("train", train), ("test", test)):
    ds = FederatedDataset.open(tmp_path / "out" / split)
    users = [u for f in files for u in f]
    assert list(ds.client_ids) == [u for u, _, _ in users]
    assert ds.label_names == list(leaf.ALL_LETTERS)
    assert ds.feature_specs["x"] == (np.dtype(np.int32), (80,))
    for u, xs, ys in users:
      c = ds.client(u)
      np.testing.assert_array_equal(
        c["x"], [[leaf.ALL_LETTERS.find(ch) for ch in s] for s in xs]
      )  # LEAF word_to_indices
      np.testing.assert_array_equal(c["y"], [leaf.ALL_LETTERS.find(ch) for ch in ys])


def tweet(text, user="u"):
  return ["1467810369", "Mon Apr 06 22:19:45 PDT 2009", "NO_QUERY", user, text]


def test_sent140_vocabulary_from_train_padding_and_oov(tmp_path):
  train = [
    [("alice", [tweet("The cat sat. The cat!"), tweet("the DOG's bone")], [1, 0])],
    [("bob", [tweet("cat cat dog zebra")], [1])],
  ]
  test = [[("alice", [tweet("unicorn cat , the")], [0]), ("bob", [tweet("a b c d e f the cat")], [1])]]
  write_split(tmp_path / "src", "train", train)
  write_split(tmp_path / "src", "test", test)
  out = tmp_path / "out"
  leaf.convert_leaf(str(tmp_path / "src"), str(out), "sent140", vocab_size=3, max_len=4, verbose=False)
  # Train counts: cat 4, the 3, . 1, ! 1, dog's 1, bone 1, dog 1, zebra 1, sat 1.
  vocab = (out / "vocab.txt").read_text().split("\n")[:-1]
  assert vocab == ["<pad>", "<oov>", "cat", "the", "!"]  # ties broken by token
  ids = {w: i for i, w in enumerate(vocab)}
  tr = FederatedDataset.open(out / "train")
  assert list(tr.client_ids) == ["alice", "bob"]
  assert tr.label_names == ["negative", "positive"]
  np.testing.assert_array_equal(
    tr.client("alice")["x"],
    [
      [ids["the"], ids["cat"], 1, 1],  # the cat sat . (the first 4 tokens; sat, . are OOV)
      [ids["the"], 1, 1, 0],
    ],
  )  # the dog's bone <pad>
  np.testing.assert_array_equal(tr.client("alice")["y"], [1, 0])
  np.testing.assert_array_equal(tr.client("bob")["x"], [[2, 2, 1, 1]])
  te = FederatedDataset.open(out / "test")
  np.testing.assert_array_equal(te.client("alice")["x"], [[1, 2, 1, 3]])  # unicorn: OOV
  np.testing.assert_array_equal(te.client("bob")["x"], [[1, 1, 1, 1]])  # truncated to 4
  assert te.meta["provenance"]["vocab_size"] == 5
  assert leaf.tokenize("Don't STOP, me now!!") == ["don't", "stop", ",", "me", "now", "!", "!"]


def test_synthetic_dimension_must_agree_across_files(tmp_path):
  write_split(tmp_path / "src", "train", [[("a", [[0.0] * 60], [0])], [("b", [[0.0] * 59], [0])]])
  with pytest.raises(
    ConversionError,
    match=r"train_9\.json: user 'b' has x of shape \[59\] "
    r"per example but user 'a' of .* has \[60\]",
  ):
    leaf.convert_leaf(str(tmp_path / "src"), str(tmp_path / "out"), "synthetic", splits=["train"], verbose=False)


def test_synthetic(tmp_path):
  rng = np.random.default_rng(2)
  train = [
    [("f_00000", rng.normal(size=(3, 60)).tolist(), [0, 4, 2])],
    [("f_00001", rng.normal(size=(2, 60)).tolist(), [1, 1])],
  ]
  test = [[("f_00000", rng.normal(size=(1, 60)).tolist(), [3]), ("f_00001", rng.normal(size=(1, 60)).tolist(), [0])]]
  write_split(tmp_path / "src", "train", train)
  write_split(tmp_path / "src", "test", test)
  out = leaf.convert_leaf(str(tmp_path / "src"), str(tmp_path / "out"), "synthetic", verbose=False)
  ds = FederatedDataset.open(tmp_path / "out" / "train")
  assert ds.feature_specs["x"] == (np.dtype(np.float32), (60,))
  np.testing.assert_array_equal(ds.client("f_00000")["x"], np.float32(train[0][0][1]))
  np.testing.assert_array_equal(ds.client("f_00001")["y"], [1, 1])
  assert out["test"].meta["provenance"]["num_classes"] == 5


# --------------------------------------------------------------------------------------------
# Bad input.


@pytest.mark.parametrize("num_workers", [1, 2])
def test_truncated_json_names_file_and_position(femnist_source, tmp_path, num_workers):
  src, _ = femnist_source
  file = os.path.join(src, "train", "all_data_1_niid_0_keep_0_train_9.json")
  text = open(file).read()
  open(file, "w").write(text[: len(text) // 2])
  with pytest.raises(
    ConversionError,
    match=r"all_data_1_niid_0_keep_0_train_9\.json: not "
    r"valid JSON.*line 1 column \d+ \(char \d+\)",
  ):
    leaf.convert_leaf(src, str(tmp_path / "out"), "femnist", num_workers=num_workers, verbose=False)
  assert not os.path.exists(tmp_path / "out" / "train")


@pytest.mark.parametrize(
  "mutate, match",
  [
    (
      lambda o: o["user_data"]["a"]["y"].__setitem__(0, 62),
      r"user 'a': y\[0\] = 62 is outside "
      "the 62 classes",
    ),
    (lambda o: o["user_data"]["a"]["y"].__setitem__(0, 2.5), r"user 'a': y\[0\] = 2.5"),
    (
      lambda o: o["user_data"]["a"].update(x=[], y=[]) or o["num_samples"].__setitem__(0, 0),
      r"user 'a' has no examples",
    ),
    (lambda o: o["user_data"]["a"]["x"][0].pop(), r"user 'a': x\[0\] has 783 values"),
    (lambda o: o["user_data"]["a"]["x"][0].__setitem__(3, 1.5), r"x\[0\] has pixel values"),
    (
      lambda o: o["users"].append("ghost") or o["num_samples"].append(1),
      r"user 'ghost' is in \"users\" but has no \"user_data\"",
    ),
    (lambda o: o.pop("user_data"), r'missing key "user_data"'),
  ],
)
def test_malformed_femnist(tmp_path, mutate, match):
  x = (np.ones((2, 784)) * 0.5).tolist()
  obj = {"users": ["a"], "num_samples": [2], "user_data": {"a": {"x": x, "y": [1, 2]}}}
  mutate(obj)
  os.makedirs(tmp_path / "src" / "train")
  with open(tmp_path / "src" / "train" / "d.json", "w") as f:
    json.dump(obj, f)
  with pytest.raises(ConversionError, match=r"d\.json: .*" + match):
    leaf.convert_leaf(str(tmp_path / "src"), str(tmp_path / "out"), "femnist", splits=["train"], verbose=False)


def test_user_in_two_files_of_a_split(tmp_path):
  x, y = [[0.0] * 60], [0]
  write_split(tmp_path / "src", "train", [[("u1", x, y)], [("u2", x, y), ("u1", x, y)]])
  with pytest.raises(
    ConversionError,
    match=r"train_9\.json: user 'u1' also appears in .*"
    r"all_data_0_niid",
  ):
    leaf.convert_leaf(str(tmp_path / "src"), str(tmp_path / "out"), "synthetic", splits=["train"], verbose=False)


def test_shakespeare_symbol_outside_vocabulary(tmp_path):
  write_split(tmp_path / "src", "train", [[("p", ["a" * 79 + "\u00e9", "b" * 80], ["c", "d"])]])
  with pytest.raises(ConversionError, match=r"user 'p': x: element 0 holds 'é'"):
    leaf.convert_leaf(str(tmp_path / "src"), str(tmp_path / "out"), "shakespeare", splits=["train"], verbose=False)
  write_split(tmp_path / "src", "train", [[("p", ["a" * 80, "b" * 79], ["c", "d"])]])
  with pytest.raises(ConversionError, match=r"element 1 has 79 characters; expected 80"):
    leaf.convert_leaf(str(tmp_path / "src"), str(tmp_path / "out"), "shakespeare", splits=["train"], verbose=False)


def test_sent140_bad_record_and_label(tmp_path):
  write_split(tmp_path / "src", "train", [[("u", [["only", "three", "fields"]], [1])]])
  with pytest.raises(ConversionError, match=r"user 'u': x\[0\] = .*tweet record"):
    leaf.convert_leaf(str(tmp_path / "src"), str(tmp_path / "out"), "sent140", splits=["train"], verbose=False)
  write_split(tmp_path / "src", "train", [[("u", [tweet("hi")], [4])]])
  with pytest.raises(ConversionError, match=r"user 'u': y\[0\] = 4 is outside the 2 classes"):
    leaf.convert_leaf(str(tmp_path / "src"), str(tmp_path / "out"), "sent140", splits=["train"], verbose=False)


def test_missing_split_directory(femnist_source, tmp_path):
  src, _ = femnist_source
  with pytest.raises(ConversionError, match=r"valid: not a directory"):
    leaf.convert_leaf(src, str(tmp_path / "out"), "femnist", splits=["train", "valid"], verbose=False)


def test_existing_output_needs_overwrite(femnist_source, tmp_path):
  src, _ = femnist_source
  out = str(tmp_path / "out")
  leaf.convert_leaf(src, out, "femnist", splits=["test"], verbose=False)
  before = open(os.path.join(out, "test", "x.npy"), "rb").read()
  with pytest.raises(ConversionError, match=r"test: already holds a dataset.*--overwrite"):
    leaf.convert_leaf(src, out, "femnist", verbose=False)
  assert not os.path.exists(os.path.join(out, "train"))  # refused before writing anything
  assert open(os.path.join(out, "test", "x.npy"), "rb").read() == before
  ds = leaf.convert_leaf(src, out, "femnist", overwrite=True, verbose=False)
  assert ds["test"].num_examples == 3 and ds["train"].num_examples == 9


def test_cli(femnist_source, tmp_path):
  src, _ = femnist_source
  cmd = [
    sys.executable,
    "-m",
    "data_pipelines.leaf",
    "--dataset=femnist",
    f"--input_dir={src}",
    f"--output_dir={tmp_path / 'out'}",
  ]
  env = dict(os.environ, JAX_PLATFORMS="cpu")
  done = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=120)
  assert done.returncode == 0, done.stderr
  assert "train: 3 clients / 9 examples / 62 classes" in done.stdout
  assert "test: 2 clients / 3 examples / 62 classes" in done.stdout
  assert "[leaf/femnist]" in done.stderr
  # Again without --overwrite: one clear line, status 2.
  done = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=120)
  assert done.returncode == 2
  assert "already holds a dataset" in done.stderr and "Traceback" not in done.stderr
