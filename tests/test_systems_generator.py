"""The generator hits its calibration targets; shipped files load."""

import os

import numpy as np
import pytest

from fedjaxscale.systems import generate_traces, load_metadata, load_traces

_TRACES = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "traces")


@pytest.fixture(scope="module")
def traces():
  return generate_traces(4000, seed=0)


def test_compute_spread(traces):
  p05, p95 = np.percentile(traces.compute_ms, [5, 95])
  assert 12 < p05 < 19 and 160 < p95 < 240
  assert p95 / p05 > 10  # an order of magnitude


def test_bandwidth_lognormal(traces):
  assert 5000 < np.median(traces.down_kbps) < 7000
  assert 0.21 < (traces.down_kbps < 3000).mean() < 0.29


def test_diurnal_availability_with_short_slots(traces):
  av = traces.availability
  online = np.array([av.online_mask(h * 3600.0).mean() for h in range(0, 168, 2)])
  assert online.min() > 0
  assert online.max() > 2 * online.min()  # a daily cycle
  slot_min = (av.ends.astype(float) - av.starts) / 60
  assert 5 < np.median(slot_min) < 30
  assert av.ends.max() <= 7 * 86400 and av.starts.min() >= 0


def test_same_seed_same_traces():
  a, b = generate_traces(200, seed=5), generate_traces(200, seed=5)
  np.testing.assert_array_equal(a.compute_ms, b.compute_ms)
  np.testing.assert_array_equal(a.availability.starts, b.availability.starts)
  c = generate_traces(200, seed=6)
  assert not np.array_equal(a.compute_ms, c.compute_ms)


@pytest.mark.parametrize("name,n", [("synthetic_10k.npz", 10_000), ("synthetic_100k.npz", 100_000)])
def test_shipped_files(name, n):
  path = os.path.join(_TRACES, name)
  tr = load_traces(path)
  assert tr.num_clients == n
  meta = load_metadata(path)
  assert meta["num_clients"] == n
  assert tr.availability.starts.dtype == np.float32
  assert os.path.getsize(path) < 16e6


def test_shipped_10k_file_is_the_generator_output():
  shipped = load_traces(os.path.join(_TRACES, "synthetic_10k.npz"))
  fresh = generate_traces(10_000, seed=0)
  np.testing.assert_array_equal(shipped.compute_ms, fresh.compute_ms)
  np.testing.assert_array_equal(shipped.down_kbps, fresh.down_kbps)
  np.testing.assert_array_equal(shipped.availability.offsets, fresh.availability.offsets)
  np.testing.assert_array_equal(shipped.availability.starts, fresh.availability.starts)
  np.testing.assert_array_equal(shipped.availability.ends, fresh.availability.ends)
