"""Tests for data_pipelines.tfds_convert on a tiny TFDS dataset prepared in a temp data_dir.

The dataset is built by a real `tfds.core.GeneratorBasedBuilder` (PNG-encoded `Image`,
`ClassLabel`, `Text` and int64 features), so the files on disk are exactly what `tfds build`
writes; the converter then finds it by name with `tfds.builder(name, data_dir=...)`, as it would
a real prepared dataset. No network. The array_record tests need no TensorFlow; the tfrecord test
needs it and is skipped without it.
"""

import io
import os

import numpy as np
import pytest
from absl import flags
from absl.testing import flagsaver

tfds = pytest.importorskip("tensorflow_datasets")
PIL_Image = pytest.importorskip("PIL.Image")

from data_pipelines import tfds_convert  # pylint: disable=g-import-not-at-top
from data_pipelines.errors import ConversionError  # pylint: disable=g-import-not-at-top
from fedjaxscale.data.dataset import FederatedDataset  # pylint: disable=g-import-not-at-top

NAME = "fjs_tiny_fed"
CLASSES = ["cat", "dog", "owl"]
WRITERS = ["amy", "bob", "cy", "dee"]
NUM = {"train": 40, "test": 13}


def _example(split, i):
  """Example i of a split: pixel [0, 0, 0] is its index, so tests can find it again."""
  image = ((np.arange(16) * 7 + i) % 256).astype(np.uint8).reshape(4, 4, 1)
  image[0, 0, 0] = i
  label = (i // 2 + (split == "test")) % len(CLASSES)
  writer = WRITERS[(i * 3) % 7 % len(WRITERS)]  # uneven client sizes
  return image, label, writer, i % 3


def _png(image):
  buf = io.BytesIO()
  PIL_Image.fromarray(image[..., 0]).save(buf, format="PNG")
  return buf.getvalue()


class FjsTinyFed(tfds.core.GeneratorBasedBuilder, skip_registration=True):
  """Written to disk once, then read back by name as a prepared (read-only) dataset."""

  VERSION = tfds.core.Version("1.0.0")

  def _info(self):
    return tfds.core.DatasetInfo(
      builder=self,
      features=tfds.features.FeaturesDict(
        {
          "image": tfds.features.Image(shape=(4, 4, 1)),
          "label": tfds.features.ClassLabel(names=CLASSES),
          "client_id": tfds.features.Text(),
          "session": np.int64,
        }
      ),
    )

  def _split_generators(self, dl_manager):
    del dl_manager
    return {s: self._generate_examples(s) for s in NUM}

  def _generate_examples(self, split):
    for i in range(NUM[split]):
      image, label, writer, session = _example(split, i)
      # PNG bytes as tfds.features.Image stores them; encoding arrays would need TensorFlow.
      yield i, {"image": _png(image), "label": label, "client_id": writer, "session": session}


def _prepare(data_dir, file_format):
  FjsTinyFed(data_dir=str(data_dir), file_format=file_format).download_and_prepare()
  assert NAME == "fjs_tiny_fed" and os.path.isdir(os.path.join(data_dir, NAME))


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
  d = tmp_path_factory.mktemp("tfds")
  _prepare(d, "array_record")
  return str(d)


def _convert(data_dir, out, **kw):
  return tfds_convert.convert_tfds(NAME, out, data_dir=data_dir, **kw)


def _check_rows(ds, split):
  """Every stored row equals the source example it came from; returns source indices."""
  idx = np.asarray(ds.features["x"][:, 0, 0, 0]).astype(int)
  for row, i in enumerate(idx):
    image, label, _, _ = _example(split, i)
    np.testing.assert_array_equal(ds.features["x"][row], image)
    assert ds.features["y"][row] == label
  return idx


def _client_rows(ds):
  return {c: _index(ds.client(c)) for c in ds.client_ids}


def _index(examples):
  return np.asarray(examples["x"][:, 0, 0, 0]).astype(int)


# --------------------------------------------------------------------------------------------
# Natural partition.


def test_feature_partition_matches_source(data_dir, tmp_path):
  out = _convert(data_dir, tmp_path / "out", partition="feature:client_id")
  for split in ("train", "test"):
    ds = FederatedDataset.open(tmp_path / "out" / split)
    assert ds.feature_specs["x"] == (np.dtype(np.uint8), (4, 4, 1))
    assert ds.feature_specs["y"] == (np.dtype(np.int32), ())
    assert ds.label_names == CLASSES
    assert ds.meta["provenance"]["dataset"] == f"{NAME}/1.0.0"
    assert ds.meta["provenance"]["file_format"] == "array_record"
    assert ds.meta["provenance"]["split"] == split
    expected = {}
    for i in range(NUM[split]):
      expected.setdefault(_example(split, i)[2], []).append(i)
    assert list(ds.client_ids) == sorted(expected)
    assert sorted(_check_rows(ds, split)) == list(range(NUM[split]))
    for client, idx in _client_rows(ds).items():
      assert sorted(idx) == expected[client]
    assert out[split].num_examples == NUM[split]


def test_feature_partition_by_int_feature(data_dir, tmp_path):
  _convert(data_dir, tmp_path / "out", partition="feature:session", test_split="")
  ds = FederatedDataset.open(tmp_path / "out" / "train")
  assert list(ds.client_ids) == ["0", "1", "2"]
  for client, idx in _client_rows(ds).items():
    assert sorted(idx) == [i for i in range(NUM["train"]) if i % 3 == int(client)]
  assert not os.path.exists(tmp_path / "out" / "test")


# --------------------------------------------------------------------------------------------
# IID.


def test_iid_partition(data_dir, tmp_path):
  out = _convert(data_dir, tmp_path / "a", partition="iid", num_clients=6, seed=3)
  for split in ("train", "test"):
    ds = out[split]
    assert list(ds.client_ids) == ["0", "1", "2", "3", "4", "5"]
    assert ds.client_sizes.max() - ds.client_sizes.min() <= 1
    assert sorted(_check_rows(ds, split)) == list(range(NUM[split]))
  again = _convert(data_dir, tmp_path / "b", partition="iid", num_clients=6, seed=3)
  other = _convert(data_dir, tmp_path / "c", partition="iid", num_clients=6, seed=4)
  np.testing.assert_array_equal(again["train"].features["x"], out["train"].features["x"])
  assert not np.array_equal(other["train"].features["x"], out["train"].features["x"])


def test_partition_iid_sizes():
  parts = tfds_convert.partition_iid(10, 4, np.random.default_rng(0))
  assert [len(p) for p in parts] == [3, 3, 2, 2]
  assert sorted(np.concatenate(parts)) == list(range(10))


# --------------------------------------------------------------------------------------------
# Dirichlet.


def test_dirichlet_partition(data_dir, tmp_path):
  out = _convert(data_dir, tmp_path / "a", partition="dirichlet:0.5", num_clients=4, seed=1)
  for split in ("train", "test"):
    ds = out[split]
    assert list(ds.client_ids) == ["0", "1", "2", "3"]
    assert ds.client_sizes.max() - ds.client_sizes.min() <= 1
    assert sorted(_check_rows(ds, split)) == list(range(NUM[split]))
    assert ds.meta["provenance"]["partition"] == {"kind": "dirichlet", "feature": None, "alpha": 0.5, "num_clients": 4}
  again = _convert(data_dir, tmp_path / "b", partition="dirichlet:0.5", num_clients=4, seed=1)
  np.testing.assert_array_equal(again["test"].features["y"], out["test"].features["y"])


def test_dirichlet_follows_each_clients_distribution():
  # One-hot q: while its class lasts, a client takes only that class; then what is left.
  labels = np.repeat([0, 1, 2], [6, 6, 3])
  q = np.eye(3)[[0, 1, 2, 0, 1]]
  parts = tfds_convert.partition_dirichlet(labels, q, np.random.default_rng(0))
  assert [len(p) for p in parts] == [3, 3, 3, 3, 3]
  assert [sorted(set(labels[p])) for p in parts[:4]] == [[0], [1], [2], [0]]
  assert sorted(np.concatenate(parts)) == list(range(15))


def test_dirichlet_alpha_controls_skew():
  rng = np.random.default_rng(0)
  labels = np.repeat(np.arange(10), 200)
  prior = np.bincount(labels)

  def skew(alpha):
    q = tfds_convert.dirichlet_label_distributions(prior, alpha, 20, rng)
    parts = tfds_convert.partition_dirichlet(labels, q, rng)
    return np.mean([np.bincount(labels[p], minlength=10).max() / len(p) for p in parts])

  # Near IID, the top class holds about 1/10; at alpha = 0.01 nearly all of q_k is on one
  # class, and a client gets other classes only once two clients have used up that one.
  assert skew(1000.0) < 0.2
  assert skew(0.01) > 0.7
  q = tfds_convert.dirichlet_label_distributions([1, 3, 0], 1.0, 20000, rng)
  np.testing.assert_allclose(q.mean(axis=0), [0.25, 0.75, 0.0], atol=0.01)  # E[q] = p


# --------------------------------------------------------------------------------------------
# Bad input and the output guard.


@pytest.mark.parametrize(
  "kw, message",
  [
    (dict(name="fjs_no_such_dataset", partition="iid", num_clients=2), "unknown TFDS dataset"),
    (dict(partition="feature:writer_id"), "no feature 'writer_id'"),
    (dict(partition="iid", num_clients=2, y_key="session"), "not a ClassLabel"),
    (dict(partition="iid", num_clients=2, x_key="pixels"), "no feature 'pixels'"),
    (dict(partition="dirichlet:0", num_clients=2), "alpha must be"),
    (dict(partition="dirichlet:-1", num_clients=2), "alpha must be"),
    (dict(partition="dirichlet:nan", num_clients=2), "alpha must be"),
    (dict(partition="dirichlet:0.5"), "needs num_clients"),
    (dict(partition="iid", num_clients=14), "split 'test': 14 clients but only 13 examples"),
    (dict(partition="iid", num_clients=2, test_split="validation"), "Unknown split"),
    (dict(partition="shards:2"), "expected feature:NAME"),
  ],
)
def test_bad_input(data_dir, tmp_path, kw, message):
  name = kw.pop("name", NAME)
  with pytest.raises(ConversionError, match=message):
    tfds_convert.convert_tfds(name, tmp_path / "out", data_dir=data_dir, **kw)
  assert not os.path.exists(tmp_path / "out" / "train")


def test_known_dataset_not_prepared(tmp_path):
  match = "'mnist' is not prepared under .*tfds.builder\\('mnist'"
  with pytest.raises(ConversionError, match=match):
    tfds_convert.convert_tfds(
      "mnist", tmp_path / "out", data_dir=str(tmp_path / "empty"), partition="iid", num_clients=2
    )


def test_existing_output_needs_overwrite(data_dir, tmp_path):
  first = _convert(data_dir, tmp_path / "out", partition="iid", num_clients=2)
  before = np.array(first["train"].features["x"])
  with pytest.raises(ConversionError, match="already holds a dataset.*--overwrite"):
    _convert(data_dir, tmp_path / "out", partition="iid", num_clients=3)
  np.testing.assert_array_equal(FederatedDataset.open(tmp_path / "out" / "train").features["x"], before)
  again = _convert(data_dir, tmp_path / "out", partition="iid", num_clients=3, overwrite=True)
  assert again["train"].num_clients == 3


def test_cli(data_dir, tmp_path, capsys):
  # In-process (a subprocess costs ~3 s of imports): parse the real flags, call main.
  args = [
    "tfds_convert",
    f"--dataset={NAME}",
    f"--data_dir={data_dir}",
    f"--output_dir={tmp_path / 'out'}",
    "--partition=dirichlet:0.3",
    "--num_clients=3",
  ]
  with flagsaver.flagsaver():
    tfds_convert.main(flags.FLAGS(args))
    err = capsys.readouterr().err
    assert "train: 3 clients, 40 examples, 3 classes (of 3)" in err
    assert "test: 3 clients, 13 examples, 3 classes (of 3)" in err
    assert FederatedDataset.open(tmp_path / "out" / "test").num_examples == 13
    with pytest.raises(SystemExit) as exit_info:
      tfds_convert.main(flags.FLAGS(args))
    assert exit_info.value.code == 2
    assert "error: " in capsys.readouterr().err


# --------------------------------------------------------------------------------------------
# tfrecord, TFDS's default format: written and read through TensorFlow (tf.data).


def test_tfrecord_dataset(tmp_path):
  pytest.importorskip("tensorflow")
  _prepare(tmp_path / "tfds", "tfrecord")
  out = _convert(str(tmp_path / "tfds"), tmp_path / "out", partition="feature:client_id")
  assert out["train"].meta["provenance"]["file_format"] == "tfrecord"
  assert list(out["train"].client_ids) == sorted(set(WRITERS))
  assert sorted(_check_rows(out["train"], "train")) == list(range(NUM["train"]))
  assert sorted(_check_rows(out["test"], "test")) == list(range(NUM["test"]))
