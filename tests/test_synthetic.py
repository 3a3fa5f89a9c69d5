"""Tests of the Synthetic(alpha, beta) generator (Li et al., MLSys 2020) and its splits."""

import json
import os

import numpy as np
import pytest

from fedjaxscale.data.dataset import DatasetError, FederatedDataset, open_splits
from fedjaxscale.data.synthetic import _client_models, make_synthetic, synthetic_client_sizes, write_synthetic

SMALL = dict(max_size=200)  # Keeps tests fast: at most 200 examples per client.


def _offsets(sizes):
  return np.concatenate([[0], np.cumsum(sizes)])


def _label_hist(y, sizes, num_classes=10):
  off = _offsets(sizes)
  return np.stack([np.bincount(y[off[k] : off[k + 1]], minlength=num_classes) / sizes[k] for k in range(len(sizes))])


def test_shapes_dtypes_ids():
  ids, feats, sizes = make_synthetic(12, seed=3, **SMALL)
  assert list(ids[:2]) == ["f_00000", "f_00001"] and len(ids) == 12 and ids.dtype.kind == "U"
  assert sizes.dtype == np.int64 and sizes.min() >= 50 and sizes.max() <= 200
  n = int(sizes.sum())
  assert feats["x"].dtype == np.float32 and feats["x"].shape == (n, 60)
  assert feats["y"].dtype == np.int32 and feats["y"].shape == (n,)
  assert feats["y"].min() >= 0 and feats["y"].max() < 10
  ids, feats, _ = make_synthetic(3, num_features=5, num_classes=4, min_size=2, max_size=4)
  assert feats["x"].shape[1] == 5 and feats["y"].max() < 4


def test_labels_and_features_follow_the_model():
  """Reference check, one row at a time: y = argmax(W_k x + b_k), and x - v_k has the
  diagonal covariance Sigma_jj = j^-1.2."""
  kw = dict(alpha=0.5, beta=0.5, seed=11)
  ids, feats, sizes = make_synthetic(8, min_size=300, max_size=2000, **kw)
  w, b, v = _client_models(8, num_features=60, num_classes=10, iid=False, **kw)
  client = np.repeat(np.arange(8), sizes)
  for r in range(0, len(client), 7):
    k = client[r]
    assert feats["y"][r] == np.argmax(w[k] @ feats["x"][r].astype(np.float64) + b[k])
  resid = feats["x"] - v[client]
  want = np.arange(1, 61) ** -1.2
  np.testing.assert_allclose(resid.mean(0), 0, atol=0.05)
  np.testing.assert_allclose(resid.var(0), want, rtol=0.15)


def test_deterministic_bytes(tmp_path):
  a = write_synthetic(tmp_path / "a", 10, seed=5, **SMALL)
  b = write_synthetic(tmp_path / "b", 10, seed=5, **SMALL)
  for split in ("train", "test"):
    files = sorted(os.listdir(a[split].path))
    assert files == sorted(os.listdir(b[split].path))
    assert files == ["client_ids.npy", "client_offsets.npy", "meta.json", "x.npy", "y.npy"]
    for f in files:
      assert (tmp_path / "a" / split / f).read_bytes() == (tmp_path / "b" / split / f).read_bytes()


def test_seeds_differ():
  _, f1, s1 = make_synthetic(10, seed=0, **SMALL)
  _, f2, s2 = make_synthetic(10, seed=1, **SMALL)
  assert not np.array_equal(s1, s2)
  n = min(len(f1["x"]), len(f2["x"]))
  assert not np.array_equal(f1["x"][:n], f2["x"][:n])


def test_splits(tmp_path):
  ids, feats, sizes = make_synthetic(20, seed=2, **SMALL)
  splits = write_synthetic(tmp_path, 20, seed=2, **SMALL)
  assert splits.keys() == open_splits(tmp_path).keys() == {"train", "test"}
  train, test = splits["train"], splits["test"]
  for ds in (train, test):
    assert list(ds.client_ids) == list(ids)
  np.testing.assert_array_equal(train.client_sizes + test.client_sizes, sizes)
  np.testing.assert_array_equal(test.client_sizes, np.floor(0.2 * sizes))
  # Each client's train rows then test rows are exactly its generated examples.
  off = _offsets(sizes)
  for k in (0, 7, 19):
    for name in ("x", "y"):
      joined = np.concatenate([train.client(k)[name], test.client(k)[name]])
      np.testing.assert_array_equal(joined, feats[name][off[k] : off[k + 1]])
  assert train.label_names == [str(i) for i in range(10)]


def test_every_client_keeps_a_training_example(tmp_path):
  splits = write_synthetic(tmp_path, 5, min_size=1, max_size=2, test_fraction=0.9)
  assert splits["train"].client_sizes.min() >= 1
  np.testing.assert_array_equal(
    splits["train"].client_sizes + splits["test"].client_sizes, synthetic_client_sizes(5, min_size=1, max_size=2)
  )
  none = write_synthetic(tmp_path / "none", 5, test_fraction=0.0, **SMALL)
  assert none["test"].num_examples == 0 and none["test"].num_clients == 5


def test_provenance(tmp_path):
  write_synthetic(tmp_path, 4, alpha=0.5, beta=0.25, seed=9, **SMALL)
  meta = json.loads((tmp_path / "train" / "meta.json").read_text())
  prov = meta["provenance"]
  assert prov["generator"] == "fedjaxscale.data.synthetic"
  assert prov["name"] == "synthetic(0.5,0.25)" and prov["split"] == "train"
  assert prov["parameters"] == dict(
    num_clients=4, alpha=0.5, beta=0.25, iid=False, seed=9, test_fraction=0.2, max_size=200
  )
  assert "Federated Optimization in Heterogeneous Networks" in prov["reference"]
  iid = write_synthetic(tmp_path / "iid", 3, iid=True, **SMALL)
  assert iid["test"].meta["provenance"]["name"] == "synthetic_iid"


def test_refuses_existing_splits_before_writing(tmp_path):
  write_synthetic(tmp_path / "first", 3, **SMALL)
  os.rename(tmp_path / "first" / "test", tmp_path / "test")
  with pytest.raises(DatasetError, match="already holds a dataset"):
    write_synthetic(tmp_path, 3, **SMALL)
  assert not (tmp_path / "train").exists()  # Nothing half-written.
  write_synthetic(tmp_path, 3, seed=1, overwrite=True, **SMALL)
  assert FederatedDataset.open(tmp_path / "test").meta["provenance"]["parameters"]["seed"] == 1


def test_power_law_sizes():
  sizes = synthetic_client_sizes(2000, seed=0)
  median = np.median(sizes)
  assert sizes.min() >= 50 and sizes.max() / median > 50
  # Heavy tail: lognormal(4, 2) puts ~7% of clients above 10x the median.
  assert 0.03 < np.mean(sizes > 10 * median) < 0.15
  capped = synthetic_client_sizes(2000, seed=0, max_size=500)
  assert capped.max() == 500
  np.testing.assert_array_equal(capped, np.minimum(sizes, 500))
  # make_synthetic uses the same sizes.
  np.testing.assert_array_equal(make_synthetic(30, seed=4, **SMALL)[2], synthetic_client_sizes(30, seed=4, **SMALL))


def test_heterogeneity():
  fixed = dict(min_size=100, max_size=100, seed=0)

  def label_skew(**kw):  # Mean share of a client's most common label.
    _, feats, sizes = make_synthetic(200, **fixed, **kw)
    return _label_hist(feats["y"], sizes).max(1).mean()

  def feature_shift(**kw):  # Variance over clients of the client's mean feature value.
    _, feats, sizes = make_synthetic(200, **fixed, **kw)
    means = np.add.reduceat(feats["x"].astype(np.float64), _offsets(sizes)[:-1]) / 100
    return means.mean(1).var()

  iid, hetero = label_skew(iid=True), label_skew(alpha=1.0, beta=1.0)
  assert iid < 0.5 < hetero
  assert label_skew(alpha=0.0, beta=4.0) > label_skew(alpha=0.0, beta=0.0) + 0.03
  # v_k = B_k + N(0, 1) per dimension, so the mean over d dims varies as beta^2 + 1/d.
  for beta in (0.0, 1.0, 2.0):
    np.testing.assert_allclose(feature_shift(alpha=1.0, beta=beta), beta**2 + 1 / 60, rtol=0.3)
  # IID: one shared model and feature distribution, so every client looks alike.
  _, feats, sizes = make_synthetic(200, iid=True, **fixed)
  hist = _label_hist(feats["y"], sizes)
  assert np.abs(hist - hist.mean(0)).sum(1).mean() / 2 < 0.15


def test_alpha_does_not_change_labels():
  """u_k adds the same amount to every class's logit, so alpha moves no label (as published)."""
  _, f0, _ = make_synthetic(20, alpha=0.0, beta=1.0, **SMALL)
  _, f1, _ = make_synthetic(20, alpha=3.0, beta=1.0, **SMALL)
  np.testing.assert_array_equal(f0["x"], f1["x"])
  assert np.mean(f0["y"] == f1["y"]) > 0.999


@pytest.mark.parametrize("kwargs", [dict(alpha=-1.0), dict(min_size=0), dict(max_size=10), dict(num_features=0)])
def test_rejects_bad_arguments(kwargs):
  with pytest.raises(ValueError):
    make_synthetic(3, **kwargs)


def test_rejects_bad_test_fraction(tmp_path):
  with pytest.raises(ValueError, match="test_fraction"):
    write_synthetic(tmp_path, 3, test_fraction=1.0)
