"""Every bad input gives a `TraceError` naming the file and the client."""

import pickle

import numpy as np
import pytest

from fedjaxscale.systems import (
  TraceError,
  generate_traces,
  load_fedscale_traces,
  load_traces,
  read_fedscale_behavior,
  read_fedscale_capacity,
  save_traces,
)


def write_pickle(path, obj):
  with open(path, "wb") as f:
    pickle.dump(obj, f)
  return str(path)


GOOD_CAP = {"computation": 50.0, "communication": 1000.0}


@pytest.mark.parametrize(
  "entry,what",
  [
    ({"computation": -1.0, "communication": 10.0}, "computation"),
    ({"computation": float("nan"), "communication": 10.0}, "computation"),
    ({"computation": 5.0, "communication": 0.0}, "bandwidth"),
    ({"computation": 5.0, "communication": float("inf")}, "bandwidth"),
    ({"computation": 5.0}, "missing key 'communication'"),
    ({"communication": 5.0}, "missing key 'computation'"),
    ({"computation": "fast", "communication": 5.0}, "not a number"),
  ],
)
def test_bad_capacity(tmp_path, entry, what):
  path = write_pickle(tmp_path / "client_device_capacity", {1: GOOD_CAP, 42: entry})
  with pytest.raises(TraceError) as e:
    read_fedscale_capacity(path)
  msg = str(e.value)
  assert "client_device_capacity" in msg and "client 42" in msg
  assert what in msg
  assert e.value.client == 42


GOOD_BEH = {"active": [0], "inactive": [10], "finish_time": 100}


@pytest.mark.parametrize(
  "entry,what",
  [
    ({"active": [0], "finish_time": 100}, "missing key 'inactive'"),
    ({"inactive": [5], "finish_time": 100}, "missing key 'active'"),
    ({"active": [0], "inactive": [5]}, "missing key 'finish_time'"),
    ({"active": [0, 5], "inactive": [3], "finish_time": 100}, "entries"),
    ({"active": [20, 0], "inactive": [30, 5], "finish_time": 100}, "not sorted"),
    ({"active": [0, 5], "inactive": [10, 20], "finish_time": 100}, "overlap"),
    ({"active": [10], "inactive": [5], "finish_time": 100}, "ends before"),
    ({"active": [-5], "inactive": [5], "finish_time": 100}, "before 0"),
    ({"active": [float("nan")], "inactive": [5], "finish_time": 100}, "NaN"),
    ({"active": [0], "inactive": [5], "finish_time": 0}, "finish_time"),
  ],
)
def test_bad_behavior(tmp_path, entry, what):
  path = write_pickle(tmp_path / "client_behave_trace", {"u1": GOOD_BEH, "u2": entry})
  with pytest.raises(TraceError) as e:
    read_fedscale_behavior(path)
  msg = str(e.value)
  assert "client_behave_trace" in msg and "client u2" in msg
  assert what in msg


@pytest.mark.parametrize("reader", [read_fedscale_capacity, read_fedscale_behavior])
@pytest.mark.parametrize("obj,what", [({}, "empty trace"), ([1, 2], "expected a dict")])
def test_empty_or_wrong_pickle(tmp_path, reader, obj, what):
  path = write_pickle(tmp_path / "trace.pkl", obj)
  with pytest.raises(TraceError, match=what) as e:
    reader(path)
  assert "trace.pkl" in str(e.value)


def test_unreadable_pickle(tmp_path):
  path = tmp_path / "broken"
  path.write_bytes(b"not a pickle")
  with pytest.raises(TraceError, match="broken: cannot read"):
    load_fedscale_traces(3, str(path))


def test_trace_error_is_a_value_error():
  assert issubclass(TraceError, ValueError)


# Our own format.


def own_file(tmp_path, **override):
  fields = dict(
    format=np.array("fedjaxscale.traces"),
    version=np.array(1),
    compute_ms_per_sample=np.array([10.0, 20.0, 30.0], np.float32),
    down_kbps=np.array([1e3, 2e3, 3e3], np.float32),
    up_kbps=np.array([1e3, 2e3, 3e3], np.float32),
    period_s=np.array(100.0),
    offsets=np.array([0, 1, 2, 4]),
    on_start_s=np.array([0, 10, 20, 50], np.int32),
    on_duration_s=np.array([5, 5, 10, 10], np.int32),
  )
  for k, v in override.items():
    if v is None:
      del fields[k]
    else:
      fields[k] = v
  path = tmp_path / "traces.npz"
  np.savez_compressed(path, **fields)
  return str(path)


def test_own_format_good_file_loads(tmp_path):
  tr = load_traces(own_file(tmp_path))
  assert tr.num_clients == 3
  assert tr.availability.is_online([2, 2], [25.0, 45.0]).tolist() == [True, False]


@pytest.mark.parametrize(
  "override,client,what",
  [
    (dict(compute_ms_per_sample=np.array([10.0, np.nan, 3.0])), 1, "NaN"),
    (dict(compute_ms_per_sample=np.array([10.0, 2.0, -3.0])), 2, "> 0"),
    (dict(down_kbps=np.array([0.0, 2.0, 3.0])), 0, "down_kbps"),
    (dict(up_kbps=np.array([1.0, 0.0, 3.0])), 1, "up_kbps"),
    (dict(on_start_s=np.array([0, 10, 40, 20], np.int32)), 2, "not sorted"),
    (dict(on_duration_s=np.array([5, 5, 35, 10], np.int32)), 2, "overlap"),
    (dict(on_duration_s=np.array([5, 5, 10, 60], np.int32)), 2, "after the period"),
    (dict(on_duration_s=np.array([5, -5, 10, 10], np.int32)), 1, "negative"),
    (dict(up_kbps=None), None, "missing field 'up_kbps'"),
    (dict(offsets=None), None, "missing field 'offsets'"),
    (dict(format=np.array("something else")), None, "format"),
    (dict(offsets=np.array([0])), None, "empty trace"),
    (dict(compute_ms_per_sample=np.array([1.0, 2.0])), None, "different"),
    (dict(offsets=np.array([0, 1, 2, 3])), None, "offsets must run"),
    (dict(period_s=np.array(-1.0)), 0, "period"),
  ],
)
def test_own_format_bad_input(tmp_path, override, client, what):
  path = own_file(tmp_path, **override)
  with pytest.raises(TraceError) as e:
    load_traces(path)
  msg = str(e.value)
  assert msg.startswith(path), msg
  assert what in msg, msg
  assert e.value.client == client
  if client is not None:
    assert f"client {client}:" in msg


def test_not_a_trace_file(tmp_path):
  path = tmp_path / "x.npz"
  path.write_text("hello")
  with pytest.raises(TraceError, match="cannot read"):
    load_traces(str(path))


def test_roundtrip(tmp_path):
  tr = generate_traces(300, seed=3)
  path = str(tmp_path / "g.npz")
  save_traces(path, tr, metadata={"seed": 3})
  back = load_traces(path)
  for f in ("compute_ms", "down_kbps", "up_kbps"):
    np.testing.assert_array_equal(getattr(back, f), getattr(tr, f))
  for f in ("offsets", "starts", "ends", "period"):
    np.testing.assert_array_equal(getattr(back.availability, f), getattr(tr.availability, f))
  # A population view is written expanded.
  view = tr.for_population(1000, "modulo")
  save_traces(path, view)
  back = load_traces(path)
  t = np.linspace(0, 7 * 86400, 50)
  for c in (0, 299, 300, 999):
    np.testing.assert_array_equal(back.availability.is_online([c] * 50, t), view.availability.is_online([c] * 50, t))
