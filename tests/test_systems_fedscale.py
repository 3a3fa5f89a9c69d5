"""FedScale pickles: loading, the id mapping, and FedScale's round rule."""

import pickle

import numpy as np
import pytest

from fedjaxscale.scheduler import Status, SyncConfig, SyncPlanner
from fedjaxscale.systems import LatencyModel, load_fedscale_traces, read_fedscale_behavior, read_fedscale_capacity


def write(path, obj):
  with open(path, "wb") as f:
    pickle.dump(obj, f)
  return str(path)


def test_read_capacity_and_behavior(tmp_path):
  cap = write(
    tmp_path / "client_device_capacity",
    {
      1: {"computation": 50.0, "communication": 2000.0},
      2: {"computation": 80.5, "communication": 700.0, "dl_kbps": 900.0, "ul_kbps": 300.0},
    },
  )
  keys, comp, down, up = read_fedscale_capacity(cap)
  assert keys == [1, 2]
  assert comp.tolist() == [50.0, 80.5]
  assert down.tolist() == [2000.0, 900.0]
  assert up.tolist() == [2000.0, 300.0]
  beh = write(
    tmp_path / "client_behave_trace",
    {
      7: {"active": [0, 30], "inactive": [10, 60], "finish_time": 100, "duration": 99, "model": "x"},
      9: {"active": [20], "inactive": [150], "finish_time": 120, "duration": 1, "model": "y"},
    },
  )
  keys, av = read_fedscale_behavior(beh)
  assert keys == [7, 9]
  assert av.period.tolist() == [100.0, 120.0]
  # Clipped to finish_time, the part FedScale can see.
  assert av.ends.tolist() == [10.0, 60.0, 120.0]
  assert av.is_online([0, 0, 1], [105.0, 125.0, 145.0]).tolist() == [True, False, True]


def test_fedscale_mapping(tmp_path):
  # Capacity is looked up by key (client id i + 1) % len, with FedScale's
  # fallback when the key is missing; behaviour by position.
  cap = write(
    tmp_path / "cap",
    {
      1: {"computation": 10.0, "communication": 100.0},
      2: {"computation": 20.0, "communication": 200.0},
      3: {"computation": 30.0, "communication": 300.0},
    },
  )
  beh = write(
    tmp_path / "beh",
    {
      "a": {"active": [0], "inactive": [10], "finish_time": 100},
      "b": {"active": [20], "inactive": [30], "finish_time": 100},
    },
  )
  tr = load_fedscale_traces(4, cap, beh)
  # Members 0..3 are FedScale clients 1..4 -> keys 1, 2, 0 (missing), 1.
  assert tr.compute_ms.tolist() == [10.0, 20.0, 1.0, 10.0]
  assert tr.down_kbps.tolist() == [100.0, 200.0, 1.0, 100.0]
  # Behaviour entries by position (i + 1) % 2 -> b, a, b, a.
  assert tr.availability.is_online(np.arange(4), 25.0).tolist() == [True, False, True, False]
  tr = load_fedscale_traces(4, cap, beh, mapping="modulo")
  assert tr.compute_ms.tolist() == [10.0, 20.0, 30.0, 10.0]
  assert tr.availability.is_online(np.arange(4), 5.0).tolist() == [True, False, True, False]


def test_without_behavior_everyone_is_always_online(tmp_path):
  cap = write(tmp_path / "cap", {0: {"computation": 1.0, "communication": 5.0}})
  tr = load_fedscale_traces(3, cap)
  assert tr.availability.is_online(np.arange(3), 12345.6).all()
  assert np.isinf(tr.availability.online_until([0], 7.0)[0])


# The hand-worked round. FedScale's completion time is
#   3 * batch * steps * ms / 1000 + (download + upload kbit) / kbit/s;
# here batch 10, 1 step, a 1,000-kbit model both ways:
#   member  ms    kbit/s  compute  transfer  total  on (finish_time 100)
#   A       100   1000    3        2         5      [0, 50]
#   B       200   500     6        4         10     [5, 12], [18, 40]
#   C       100   250     3        8         11     [8, 15]
#   D       50    1000    1.5      2         3.5    [0, 9], [60, 100]
#   E       400   1000    12       2         14     [9, 30]
# Round at t = 10 (and at 110: time wraps modulo finish_time): online A, B,
# C, E (D is not). Finishes: A 15, B 20, C 21, E 24. FedScale checks only
# the end points: C is offline at 21 -> dropped; B is online at 20 (its gap
# 12..18 is not looked at) -> kept. K = 3 -> A, B, E; round ends at 24.
SPECS = {
  "A": (100.0, 1000.0, [0], [50]),
  "B": (200.0, 500.0, [5, 18], [12, 40]),
  "C": (100.0, 250.0, [8], [15]),
  "D": (50.0, 1000.0, [0, 60], [9, 100]),
  "E": (400.0, 1000.0, [9], [30]),
}
NAMES = list(SPECS)


def fedscale_files(tmp_path):
  # FedScale maps member i (client i + 1) to entry (i + 1) % 5.
  cap, beh = {}, {}
  for i, name in enumerate(NAMES):
    ms, kbps, active, inactive = SPECS[name]
    key = (i + 1) % len(NAMES)
    cap[key] = {"computation": ms, "communication": kbps}
    beh[key] = {"active": active, "inactive": inactive, "finish_time": 100, "duration": 100, "model": "phone"}
  beh = dict(sorted(beh.items()))  # positions 0..4 = keys 0..4
  return (write(tmp_path / "client_device_capacity", cap), write(tmp_path / "client_behave_trace", beh))


@pytest.mark.parametrize("start", [10.0, 110.0])
def test_fedscale_endpoints_rule_by_hand(tmp_path, start):
  cap, beh = fedscale_files(tmp_path)
  traces = load_fedscale_traces(5, cap, beh)
  lm = LatencyModel(model_bits=1_000_000, local_steps=1, batch_size=10)
  planner = SyncPlanner(traces, lm, SyncConfig(3, overcommit=2.0, availability_mode="endpoints"), start_time=start)
  plan = planner.plan_round()
  got = {NAMES[c]: (Status(s).name, f - start) for c, s, f in zip(plan.clients, plan.status, plan.finish)}
  assert got == {"A": ("AGGREGATED", 5.0), "B": ("AGGREGATED", 10.0), "C": ("DROPPED", 11.0), "E": ("AGGREGATED", 14.0)}
  assert [NAMES[c] for c in plan.aggregated] == ["A", "B", "E"]
  assert plan.end_time == start + 14.0 and planner.clock.now == start + 14.0
  assert not plan.short


def test_same_round_in_window_mode_drops_b(tmp_path):
  cap, beh = fedscale_files(tmp_path)
  traces = load_fedscale_traces(5, cap, beh)
  lm = LatencyModel(model_bits=1_000_000, local_steps=1, batch_size=10)
  plan = SyncPlanner(traces, lm, SyncConfig(3, overcommit=2.0), start_time=10.0).plan_round()
  got = {NAMES[c]: Status(s).name for c, s in zip(plan.clients, plan.status)}
  assert got == {"A": "AGGREGATED", "B": "DROPPED", "C": "DROPPED", "E": "AGGREGATED"}
  drop = dict(zip((NAMES[c] for c in plan.clients), plan.drop_time))
  assert drop["B"] == 12.0 and drop["C"] == 15.0
  assert plan.short and "2 of 3" in plan.message
  assert plan.end_time == 24.0
