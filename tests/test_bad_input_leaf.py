"""LEAF files in the wild (issue 10, items 13 and 14): Shakespeare test splits whose num_samples
overstate the examples kept, and FedProx's Synthetic files with float labels."""

import json
import os

import numpy as np
import pytest

from data_pipelines import leaf
from data_pipelines.errors import ConversionError, ConversionWarning
from fedjaxscale.data.dataset import FederatedDataset


def write(path, obj):
  os.makedirs(os.path.dirname(path), exist_ok=True)
  with open(path, "w") as f:
    json.dump(obj, f)


def test_shakespeare_test_split_with_num_samples_79_too_large_converts_with_a_warning(tmp_path):
  # As current LEAF's split_data.py writes it: the test user's num_samples is 79 larger than kept.
  line = "To be, or not to be, that is the question: Whether 'tis nobler in the mind to suffer."[:80]
  x = [line] * 3
  y = ["a", "b", "c"]
  for split, count in (("train", 3), ("test", 3 + 79)):
    obj = {"users": ["HAMLET"], "num_samples": [count], "user_data": {"HAMLET": {"x": x, "y": y}}}
    write(tmp_path / "src" / split / f"all_data_niid_0_keep_0_{split}_9.json", obj)
  with pytest.warns(ConversionWarning, match=r"user 'HAMLET': num_samples says 82 but user_data holds 3 examples"):
    leaf.convert_leaf(str(tmp_path / "src"), str(tmp_path / "out"), "shakespeare", verbose=False)
  test = FederatedDataset.open(tmp_path / "out" / "test")
  assert test.num_examples == 3  # the real records


def synthetic_file(path, ys):
  rng = np.random.default_rng(0)
  obj = {
    "users": ["f_00000"],
    "num_samples": [len(ys)],
    "user_data": {"f_00000": {"x": rng.normal(size=(len(ys), 60)).tolist(), "y": ys}},
  }
  write(path, obj)


def test_fedprox_synthetic_float_labels_that_are_whole_numbers_are_accepted(tmp_path):
  synthetic_file(tmp_path / "src" / "train" / "mytrain.json", [4.0, 0.0, 9.0])
  leaf.convert_leaf(str(tmp_path / "src"), str(tmp_path / "out"), "synthetic", splits=["train"], verbose=False)
  ds = FederatedDataset.open(tmp_path / "out" / "train")
  assert ds.features["y"].dtype.kind == "i"
  np.testing.assert_array_equal(ds.client("f_00000")["y"], [4, 0, 9])


@pytest.mark.parametrize("bad", [4.5, float("nan")])
def test_float_labels_that_are_not_whole_numbers_are_refused(tmp_path, bad):
  synthetic_file(tmp_path / "src" / "train" / "mytrain.json", [4.0, bad])
  with pytest.raises(ConversionError, match=r"mytrain\.json: .*y\[1\] = .*labels must be integers"):
    leaf.convert_leaf(str(tmp_path / "src"), str(tmp_path / "out"), "synthetic", splits=["train"], verbose=False)
