"""The client-state store: lazy rows, memory vs memory-mapped, bfloat16, checkpoints, bad input."""

import errno
import os

import jax
import ml_dtypes
import numpy as np
import pytest

from fedjaxscale.state import (
  ClientStateStore,
  StateLayout,
  StoreError,
  StoreTooLarge,
  check_fits,
  collect,
  estimate,
  restore_chunks,
  save_chunks,
)

SPEC = {
  "w": jax.ShapeDtypeStruct((3, 2), np.float32),
  "count": jax.ShapeDtypeStruct((), np.int32),
}


def states(k, seed=0):
  rng = np.random.default_rng(seed)
  return {"w": rng.normal(size=(k, 3, 2)).astype(np.float32), "count": rng.integers(0, 100, k).astype(np.int32)}


def make(backing="memory", tmp_path=None, storage="native", chunk_rows=4, n=50):
  layout = StateLayout.from_spec(SPEC, storage)
  return ClientStateStore(layout, n, backing, None if tmp_path is None else tmp_path / "live", chunk_rows=chunk_rows)


def assert_tree_equal(a, b):
  jax.tree.map(np.testing.assert_array_equal, a, b)


def test_never_selected_clients_cost_four_bytes():
  store = ClientStateStore(StateLayout.from_spec(SPEC), 1_000_000)
  assert store.nbytes == 4_000_000 and not store.chunks
  got, fresh = store.gather([0, 999_999])
  assert fresh.all() and not got["w"].any()


@pytest.mark.parametrize("backing", ["memory", "memmap"])
def test_scatter_then_gather(backing, tmp_path):
  store = make(backing, tmp_path)
  idx = np.array([7, 3, 41, 12, 0, 33])
  s = states(6)
  store.scatter(idx, s, written=np.array([True, True, False, True, True, True]))
  got, fresh = store.gather([3, 41, 7, 0, 5])
  np.testing.assert_array_equal(fresh, [False, True, False, False, True])
  np.testing.assert_array_equal(got["w"][[0, 2, 3]], s["w"][[1, 0, 4]])
  np.testing.assert_array_equal(got["count"][[0, 2, 3]], s["count"][[1, 0, 4]])
  # Rows are allocated for every index in first-appearance order, written or not.
  np.testing.assert_array_equal(store.row_of[idx], np.arange(6))
  assert len(store.chunks) == 2 and store.dirty == {0, 1}


def test_memmap_store_equals_memory_store(tmp_path):
  a, b = make("memory"), make("memmap", tmp_path)
  for r in range(3):
    idx = np.random.default_rng(r).choice(50, 9, replace=False)
    a.scatter(idx, states(9, r))
    b.scatter(idx, states(9, r))
  assert_tree_equal(a.gather(np.arange(50)), b.gather(np.arange(50)))
  assert len(list((tmp_path / "live").glob("live-*.bin"))) == len(b.chunks)


def test_bfloat16_storage_halves_floats():
  native, half = StateLayout.from_spec(SPEC), StateLayout.from_spec(SPEC, "bfloat16")
  assert native.row_bytes == 6 * 4 + 4 + 1 and half.row_bytes == 6 * 2 + 4 + 1
  store = make(storage="bfloat16")
  s = states(3)
  store.scatter([1, 2, 3], s)
  got, _ = store.gather([1, 2, 3])
  assert got["w"].dtype == np.float32 and got["count"].dtype == np.int32
  np.testing.assert_array_equal(got["w"], s["w"].astype(ml_dtypes.bfloat16).astype(np.float32))
  np.testing.assert_array_equal(got["count"], s["count"])


def test_wrong_structure_is_refused():
  store = make()
  with pytest.raises(ValueError):
    store.scatter([1], {"w": np.zeros((1, 3, 2), np.float32)})
  with pytest.raises(IndexError, match="out of range"):
    store.gather([50])


@pytest.mark.parametrize("backing", ["memory", "memmap"])
def test_checkpoint_copies_only_changed_chunks_and_restores_exactly(backing, tmp_path):
  ckpt = tmp_path / "ckpt"
  store = make(backing, tmp_path)
  store.scatter(np.arange(12), states(12))  # chunks 0, 1, 2
  first = save_chunks(store, ckpt, 1, None)
  assert sorted(p.name for p in ckpt.iterdir()) == [f"chunk-00000{c}.000000001.bin" for c in range(3)]
  snapshot = store.gather(np.arange(50))
  store.scatter([5], states(1, 9))  # chunk 1 only
  second = save_chunks(store, ckpt, 2, first)
  assert len(list(ckpt.glob("*.000000002.bin"))) == 1
  np.testing.assert_array_equal(second["versions"], [1, 2, 1])
  after = store.gather(np.arange(50))
  store.scatter([40, 41], states(2, 5))  # written after the last checkpoint: lost on resume
  for index, expected in ((first, snapshot), (second, after)):
    restored = make(backing, tmp_path / f"r{index['versions'][1]}")
    restore_chunks(restored, index, ckpt)
    assert_tree_equal(restored.gather(np.arange(50)), expected)
    np.testing.assert_array_equal(restored.row_of, index["row_of"])
  assert collect(ckpt, [second]) == 1  # chunk 1's version 1
  assert not (ckpt / "chunk-000001.000000001.bin").exists()


def test_resume_with_another_config_is_refused(tmp_path):
  store = make()
  store.scatter([1], states(1))
  index = save_chunks(store, tmp_path, 1, None)
  other = ClientStateStore(
    StateLayout.from_spec({**SPEC, "w": jax.ShapeDtypeStruct((4, 2), np.float32)}), 50, chunk_rows=4
  )
  with pytest.raises(StoreError, match=r"another config: leaf \['w'\]: stored as float32\[3, 2\].*float32\[4, 2\]"):
    restore_chunks(other, index, tmp_path)
  with pytest.raises(StoreError, match="population of 50 clients, this config has 60"):
    restore_chunks(make(n=60), index, tmp_path)
  with pytest.raises(StoreError, match="kept as bfloat16"):
    restore_chunks(make(storage="bfloat16"), index, tmp_path)


def test_full_disk_mid_checkpoint_loses_nothing(tmp_path, monkeypatch):
  store = make()
  store.scatter(np.arange(12), states(12))
  first = save_chunks(store, tmp_path, 1, None)
  store.scatter([0, 5, 9], states(3, 4))
  calls = []
  real_fsync = os.fsync

  def full_after_one(fd):
    calls.append(fd)
    if len(calls) > 1:
      raise OSError(errno.ENOSPC, "No space left on device")
    real_fsync(fd)

  monkeypatch.setattr(os, "fsync", full_after_one)
  with pytest.raises(StoreError, match=r"chunk-000001\.000000002\.bin failed: the disk is full; earlier checkpoints"):
    save_chunks(store, tmp_path, 2, first)
  monkeypatch.setattr(os, "fsync", real_fsync)
  assert not list(tmp_path.glob("*.tmp")) and store.dirty == {0, 1, 2}
  restored = make()
  restore_chunks(restored, first, tmp_path)  # the earlier checkpoint is whole
  assert_tree_equal(restored.gather(np.arange(12))[0], states(12))
  second = save_chunks(store, tmp_path, 2, first)  # once there is room again, nothing is missing
  restored = make()
  restore_chunks(restored, second, tmp_path)
  assert_tree_equal(restored.gather(np.arange(50)), store.gather(np.arange(50)))


def test_full_disk_when_a_memmap_chunk_is_created(tmp_path, monkeypatch):
  store = make("memmap", tmp_path)

  def full(fd, offset, size):
    raise OSError(errno.ENOSPC, "No space left on device")

  monkeypatch.setattr(os, "posix_fallocate", full)
  with pytest.raises(StoreError, match=r"cannot create state chunk .*live-000000\.bin \(116 bytes\): the disk is full"):
    store.scatter([1], states(1))
  assert not list((tmp_path / "live").glob("*.bin"))


def test_size_estimate_and_budget(tmp_path):
  layout = StateLayout.from_spec(SPEC)
  est = estimate(layout, 1_000_000, max_selected=200 * 1000)
  assert est.clients == 200_000 and est.row_bytes == 29 and est.backing == "memory"
  assert estimate(layout, 10**6, memory_limit_bytes=1000).backing == "memmap"
  with pytest.raises(
    StoreTooLarge, match=r"state\.budget_mb: .*200,000 clients x 29 state bytes.*over the budget of 1\.0 MiB"
  ):
    check_fits(est, 1 << 20, tmp_path, "state.budget_mb")
  huge = estimate(StateLayout.from_spec({"w": jax.ShapeDtypeStruct((1 << 20,), np.float32)}), 10**7)
  with pytest.raises(StoreTooLarge, match="on disk, but .* free"):
    check_fits(huge, None, tmp_path, "state")
  check_fits(est, None, tmp_path, "state")
