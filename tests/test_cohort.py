"""Cohort assembly: batches, masks, shuffling, the dataset path, bucketing and its padding, errors."""

import numpy as np
import pytest

from fedjaxscale.core import Cohort, bucket_size, chunk_sizes, coarse_bucket_size
from fedjaxscale.data import gather_cohort, make_cohort, make_synthetic, padding_report, steps_for, write_dataset


def numbered(sizes):
  """Clients whose feature 'x' is the example's global row number: easy to read back."""
  out, start = [], 0
  for n in sizes:
    out.append({"x": np.arange(start, start + n, dtype=np.int32), "y": np.zeros(n, np.int32)})
    start += n
  return out


def client_stream(cohort, position):
  """The real examples one client trains on, in order."""
  for part in cohort.parts:
    own = part.owner == position
    if own.any():
      return part.batch["x"][own][part.mask[own]]
  raise AssertionError(position)


def test_local_steps_cycles_data_in_order():
  cohort = make_cohort(numbered([3, 10]), batch_size=4, local_steps=3, shuffle=False)
  assert len(cohort.parts) == 1 and cohort.parts[0].mask.shape == (2, 3, 4) and not cohort.parts[0].packed
  # A client smaller than a batch trains on all its examples every step; the rest is masked.
  np.testing.assert_array_equal(client_stream(cohort, 0), [0, 1, 2] * 3)
  np.testing.assert_array_equal(cohort.parts[0].mask[0].sum(axis=1), [3, 3, 3])
  np.testing.assert_array_equal(client_stream(cohort, 1), 3 + np.array([0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 0, 1]))
  np.testing.assert_array_equal(cohort.num_examples, [3, 10])


def test_local_epochs_masks_only_the_last_partial_batch():
  cohort = make_cohort(numbered([10]), batch_size=4, local_epochs=2, shuffle=False)
  part = cohort.parts[0]
  assert part.mask.shape == (1, 5, 4)
  np.testing.assert_array_equal(part.mask[0].sum(axis=1), [4, 4, 4, 4, 4])
  np.testing.assert_array_equal(client_stream(cohort, 0), list(range(10)) * 2)
  cohort = make_cohort(numbered([10]), batch_size=4, local_epochs=1, shuffle=False)
  np.testing.assert_array_equal(cohort.parts[0].mask[0].sum(axis=1), [4, 4, 2])


@pytest.mark.parametrize("lengths", [[6, 6, 6, 6], [5, 7, 6, 7], [1, 40, 2, 3]])
def test_segment_permutations_are_the_flat_argsort_by_every_path(lengths):
  """The row-wise sorts (equal or padded segments) give the one-argsort order exactly."""
  from fedjaxscale.data.cohort import _segment_permutations

  seg_len = np.asarray(lengths)
  seg_start = np.concatenate([[0], np.cumsum(seg_len)[:-1]])
  got = _segment_permutations(seg_len, seg_start, np.random.default_rng(3))
  u = np.random.default_rng(3).random(int(seg_len.sum()))
  seg_id = np.repeat(np.arange(len(seg_len)), seg_len)
  np.testing.assert_array_equal(got, np.argsort(seg_id + u) - seg_start[seg_id])
  for start, n in zip(seg_start, seg_len):
    np.testing.assert_array_equal(np.sort(got[start : start + n]), np.arange(n))


def test_shuffle_is_a_fresh_permutation_every_epoch_and_seeded():
  data = numbered([7, 12])
  a = make_cohort(data, batch_size=5, local_epochs=3, seed=1)
  b = make_cohort(data, batch_size=5, local_epochs=3, seed=1)
  c = make_cohort(data, batch_size=5, local_epochs=3, seed=2)
  for pos, n, first in ((0, 7, 0), (1, 12, 7)):
    stream = client_stream(a, pos)
    epochs = stream.reshape(3, n)
    for e in range(3):
      np.testing.assert_array_equal(np.sort(epochs[e]), np.arange(first, first + n))
    assert not all(np.array_equal(epochs[0], epochs[e]) for e in (1, 2))
    np.testing.assert_array_equal(stream, client_stream(b, pos))
  assert not np.array_equal(client_stream(a, 1), client_stream(c, 1))


def test_max_steps_caps_partial_work():
  cohort = make_cohort(numbered([8, 8, 8]), batch_size=2, local_steps=4, shuffle=False, max_steps=[4, 1, 0])
  assert len(client_stream(cohort, 0)) == 8 and len(client_stream(cohort, 1)) == 2
  assert len(client_stream(cohort, 2)) == 0  # no work: one masked step, so it still owns a place


def test_packing_lays_short_clients_end_to_end():
  sizes = [40, 8, 8, 16, 4]  # steps 10, 2, 2, 4, 1
  cohort = make_cohort(numbered(sizes), batch_size=4, local_epochs=1, shuffle=False)
  part = cohort.parts[0]
  # Lanes of 12 steps (the coarse bucket above the longest client, 10); best-fit decreasing puts
  # each client, longest first, into the fullest lane it fits.
  assert part.packed and (part.num_lanes, part.num_steps) == (2, 12)
  np.testing.assert_array_equal(part.owner, [[0] * 10 + [1, 1], [3, 3, 3, 3, 2, 2, 4, -1, -1, -1, -1, -1]])
  start, end, local = part.boundaries()
  assert start[part.owner != -1].sum() == 5 and end[part.owner != -1].sum() == 5
  np.testing.assert_array_equal(local[1][:7], [0, 1, 2, 3, 0, 1, 0])
  for k in range(5):
    np.testing.assert_array_equal(client_stream(cohort, k), np.arange(sum(sizes[:k]), sum(sizes[: k + 1])))
  unpacked = make_cohort(numbered(sizes), batch_size=4, local_epochs=1, shuffle=False, pack=False)
  assert not unpacked.parts[0].packed and unpacked.parts[0].num_lanes == 5
  assert cohort.padding_efficiency() > unpacked.padding_efficiency()


def test_gather_from_dataset_equals_make_cohort(tmp_path):
  ids, features, sizes = make_synthetic(40, seed=3, max_size=120)
  dataset = write_dataset(tmp_path / "train", ids, features, sizes)
  offsets = np.concatenate([[0], np.cumsum(sizes)])
  chosen = np.array([5, 0, 17, 39, 22])
  per_client = [{k: v[offsets[i] : offsets[i + 1]] for k, v in features.items()} for i in chosen]
  for mode in ({"local_steps": 3}, {"local_epochs": 1.5}):
    direct = make_cohort(per_client, 8, seed=9, client_ids=[ids[i] for i in chosen], **mode)
    by_index = gather_cohort(dataset, chosen, 8, seed=9, **mode)
    by_id = gather_cohort(dataset, [ids[i] for i in chosen], 8, seed=9, **mode)
    for other in (by_index, by_id):
      np.testing.assert_array_equal(other.client_ids, direct.client_ids)
      np.testing.assert_array_equal(other.num_examples, direct.num_examples)
      assert len(other.parts) == len(direct.parts)
      for p, q in zip(direct.parts, other.parts):
        np.testing.assert_array_equal(p.mask, q.mask)
        np.testing.assert_array_equal(p.owner, q.owner)
        for k in p.batch:
          np.testing.assert_array_equal(p.batch[k], q.batch[k])


@pytest.mark.parametrize("max_size", [2000, None])
def test_packing_keeps_padding_small_on_power_law_cohort(max_size):
  _, _, sizes = make_synthetic(1000, seed=0, max_size=max_size)
  assert sizes.max() / np.median(sizes) > 10  # heavy-tailed
  data = [{"x": np.zeros((n, 1), np.float32), "y": np.zeros(n, np.int32)} for n in sizes]
  cohort = make_cohort(data, batch_size=10, local_epochs=1, shuffle=False, lane_multiple=4)
  report = padding_report(cohort, lane_multiple=4)
  assert report["padding_efficiency"] >= 0.9, report
  part = cohort.parts[0]
  # Steps per client match the latency model's count.
  start, end, local = part.boundaries()
  real = part.owner != -1
  lengths = np.zeros(len(sizes), np.int64)
  np.add.at(lengths, part.owner[real], 1)
  np.testing.assert_array_equal(lengths, steps_for(sizes, 10, local_epochs=1))
  # The lane length is on the coarse grid, so later rounds reuse compiled shapes.
  assert part.num_steps == coarse_bucket_size(part.num_steps)


def test_min_lane_steps_keeps_the_shape():
  data = numbered([40, 8, 8, 16, 4])
  cohort = make_cohort(data, batch_size=4, local_epochs=1, min_lane_steps=24)
  assert cohort.parts[0].num_steps == 24 and cohort.parts[0].num_lanes == 1
  # Equal 3-step clients with lanes of at least 8 steps: several clients share a lane.
  fixed = make_cohort(data, batch_size=4, local_steps=3, min_lane_steps=8)
  part = fixed.parts[0]
  assert part.num_steps >= 8 and part.packed and part.num_lanes < 5
  assert [len(client_stream(fixed, k)) for k in range(5)] == [12, 12, 12, 12, 12]


def test_compiled_shapes_are_reused_within_tolerance():
  data = numbered([40, 8, 8, 16, 4])  # fresh best: 2 lanes x 12 steps = 24
  near = make_cohort(data, batch_size=4, local_epochs=1, reuse_shapes=[(3, 12)])  # 36 > 24 * 1.15: not reused
  assert (near.parts[0].num_lanes, near.parts[0].num_steps) == (2, 12)
  reused = make_cohort(data, batch_size=4, local_epochs=1, reuse_shapes=[(2, 13), (4, 16)])
  assert (reused.parts[0].num_lanes, reused.parts[0].num_steps) == (2, 13)  # 26 <= 27.6
  cheapest = make_cohort(data, batch_size=4, local_epochs=1, reuse_shapes=[(2, 13), (1, 24)])
  assert (cheapest.parts[0].num_lanes, cheapest.parts[0].num_steps) == (1, 24)  # 24 < 26
  fixed = make_cohort(data, batch_size=4, local_steps=3, reuse_shapes=[(6, 3), (8, 3)])
  assert (fixed.parts[0].num_lanes, fixed.parts[0].num_steps) == (5, 3)  # 18 > 15 * 1.15
  # With a device multiple of 2, fresh is 6 lanes (padded) x 3 = 18: a compiled (6, 3) is reused
  # as it is (a sixth idle lane), a compiled (8, 3) is not (24 > 20.7).
  fixed = make_cohort(data, batch_size=4, local_steps=3, lane_multiple=2, reuse_shapes=[(8, 3)])
  assert fixed.parts[0].num_lanes == 5
  fixed = make_cohort(data, batch_size=4, local_steps=3, lane_multiple=2, reuse_shapes=[(6, 3), (8, 3)])
  assert fixed.parts[0].num_lanes == 6 and (fixed.parts[0].owner[5] == -1).all()


def test_chunk_sizes_cover_clients_with_two_shapes_at_most():
  assert chunk_sizes(10, 4) == [12]
  assert chunk_sizes(10, 4, 4) == [4, 4, 4]
  assert chunk_sizes(1001, 4, 256) == [256, 256, 256, 240]  # 233 left: 59 units of 4 -> bucket 60
  sizes = chunk_sizes(5000, 8, 1000)
  assert sum(sizes) >= 5000 and len(set(sizes)) <= 2 and all(s % 8 == 0 for s in sizes)


def test_bucket_size_grid():
  for n in range(1, 5000):
    b = bucket_size(n)
    assert n <= b <= n * 1.125 + 1
  assert bucket_size(17, 4) % 4 == 0 and bucket_size(17, 4) >= 17


@pytest.mark.parametrize(
  "kwargs, message",
  [
    ({"batch_size": 0, "local_steps": 1}, "batch_size"),
    ({"batch_size": 2}, "exactly one of local_steps and local_epochs"),
    ({"batch_size": 2, "local_steps": 1, "local_epochs": 1}, "exactly one"),
    ({"batch_size": 2, "local_steps": 0}, "local_steps"),
    ({"batch_size": 2, "local_epochs": 0}, "local_epochs"),
    ({"batch_size": 2, "local_steps": 1, "weights": [1.0]}, "weights"),
    ({"batch_size": 2, "local_steps": 1, "max_steps": [1, -1]}, "max_steps"),
    ({"batch_size": 2, "local_steps": 1, "lane_multiple": 0}, "lane_multiple"),
  ],
)
def test_bad_arguments_are_named(kwargs, message):
  with pytest.raises(ValueError, match=message):
    make_cohort(numbered([3, 4]), **kwargs)


def test_bad_clients_are_named():
  with pytest.raises(ValueError, match="at least one client"):
    make_cohort([], 2, local_steps=1)
  with pytest.raises(ValueError, match="client 1 has features"):
    make_cohort([{"x": np.zeros(2)}, {"z": np.zeros(2)}], 2, local_steps=1)
  with pytest.raises(ValueError, match=r"client 1: feature 'x' is float32\[3\]"):
    make_cohort([{"x": np.zeros((2, 2), np.float32)}, {"x": np.zeros((2, 3), np.float32)}], 2, local_steps=1)
  with pytest.raises(ValueError, match="unequal lengths"):
    make_cohort([{"x": np.zeros(2), "y": np.zeros(3)}], 2, local_steps=1)
  with pytest.raises(ValueError, match=r"\['b'\] have no examples"):
    make_cohort([{"x": np.zeros(2)}, {"x": np.zeros(0)}], 2, local_steps=1, client_ids=["a", "b"])


def test_gather_rejects_unknown_clients(tmp_path):
  ids, features, sizes = make_synthetic(5, seed=0, max_size=60)
  dataset = write_dataset(tmp_path / "d", ids, features, sizes)
  with pytest.raises(ValueError, match="outside the dataset's 5 clients"):
    gather_cohort(dataset, [0, 7], 4, local_steps=1)
  with pytest.raises(ValueError, match="nobody"):
    gather_cohort(dataset, ["nobody"], 4, local_steps=1)


def test_cohort_checks_its_owners():
  good = make_cohort(numbered([3, 4]), 2, local_steps=1)
  with pytest.raises(ValueError, match="exactly one run of steps"):
    Cohort(good.parts, np.array(["a", "b", "c"]), np.ones(3, np.float32), np.ones(3, np.float32))
  with pytest.raises(ValueError, match="shape"):
    Cohort(good.parts, np.array(["a", "b"]), np.ones(3, np.float32), np.ones(2, np.float32))


def test_a_cohort_too_large_to_build_is_refused_with_numbers(monkeypatch):
  from fedjaxscale.data import cohort as cohort_lib

  monkeypatch.setattr(cohort_lib, "MAX_SLOTS", 100)
  data = numbered([400, 8, 8])
  # The longest client has 100 steps; lanes are the coarse bucket above it, 128.
  with pytest.raises(ValueError, match=r"3 lanes x 128 steps x batch 4 = 1,536 example slots.*for 416 real.*pack=True"):
    make_cohort(data, batch_size=4, local_epochs=1, pack=False)


@pytest.mark.parametrize(
  "kwargs, packed",
  [
    (dict(local_steps=3), False),  # lanes of their own
    (dict(local_epochs=1.0, pack=False), False),  # of their own, one epoch, ragged
    (dict(local_epochs=2.5, pack=False), False),  # of their own, several epochs
    (dict(local_epochs=1.0), True),  # short clients end to end
  ],
)
def test_built_parts_know_whether_they_are_packed(kwargs, packed):
  """The builder records ``packed`` for lanes of their own; it is what the owners say, and the
  cohort still passes the owner check it would fail if two clients shared a run."""
  rng = np.random.default_rng(3)
  clients = [{"x": np.zeros((int(n), 2), np.float32)} for n in rng.integers(3, 40, 17)]
  cohort = make_cohort(clients, 4, seed=1, **kwargs)
  for part in cohort.parts:
    o = part.owner
    assert part.packed == bool(((o[:, 1:] != o[:, :-1]) & (o[:, 1:] != -1)).any())
  Cohort(cohort.parts, cohort.client_ids, cohort.num_examples, cohort.weights)  # validates again
  assert any(p.packed for p in cohort.parts) == packed
