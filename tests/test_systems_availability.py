"""Availability queries against a brute-force reference."""

import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from fedjaxscale.systems import Availability

P = 100.0


@st.composite
def interval_lists(draw, max_clients=6):
  """Per client: disjoint, non-touching integer intervals inside [0, P]."""
  n = draw(st.integers(1, max_clients))
  clients = []
  for _ in range(n):
    cuts = sorted(draw(st.sets(st.integers(0, int(P)), max_size=8)))
    cuts = cuts[: len(cuts) // 2 * 2]
    clients.append([(float(a), float(b)) for a, b in zip(cuts[::2], cuts[1::2])])
  return clients


def build(clients, period=P):
  counts = [len(c) for c in clients]
  offsets = np.concatenate([[0], np.cumsum(counts)]).astype(np.int64)
  starts = np.array([a for c in clients for a, _ in c], np.float64)
  ends = np.array([b for c in clients for _, b in c], np.float64)
  return Availability.from_intervals(offsets, starts, ends, period)


def ref_online(intervals, t, period=P):
  x = t % period
  return any(a <= x <= b for a, b in intervals)


def ref_gaps(intervals, lo, hi, period=P):
  """Absolute open off-gaps (g0, g1) that may meet [lo, hi]."""
  gaps = []
  for k in range(int(math.floor(lo / period)) - 1, int(math.floor(hi / period)) + 2):
    base = k * period
    if not intervals:
      gaps.append((base, base + period))
      continue
    for (_, e), (s, _) in zip(intervals[:-1], intervals[1:]):
      gaps.append((base + e, base + s))
    e_last, s_first = intervals[-1][1], intervals[0][0]
    if not (e_last == period and s_first == 0):
      gaps.append((base + e_last, base + period + s_first))
  return gaps


def ref_online_throughout(intervals, a, b, period=P):
  if not (ref_online(intervals, a, period) and ref_online(intervals, b, period)):
    return False
  return not any(g0 < b and g1 > a and g0 < g1 for g0, g1 in ref_gaps(intervals, a, b, period))


@settings(max_examples=60, deadline=None)
@given(interval_lists(), st.lists(st.floats(0, 5 * P), min_size=1, max_size=6))
def test_is_online_matches_reference(clients, times):
  av = build(clients)
  for t in times + [float(a) for c in clients for a, _ in c]:
    got = av.is_online(np.arange(len(clients)), t)
    want = [ref_online(c, t) for c in clients]
    assert got.tolist() == want


@settings(max_examples=60, deadline=None)
@given(interval_lists(), st.lists(st.floats(0, 5 * P), min_size=1, max_size=6), st.data())
def test_online_counts_are_the_sums_of_online_masks(clients, times, data):
  periods = np.array(
    data.draw(st.lists(st.sampled_from([P, 1.5 * P, 3 * P]), min_size=len(clients), max_size=len(clients)))
  )
  times = times + [float(a) for c in clients for a, _ in c]
  members = np.array(data.draw(st.lists(st.integers(0, len(clients) - 1), max_size=12)), np.int64)
  av, per_row = build(clients), build(clients, periods)  # one period; each row its own
  for view in (
    av,
    av.take(members),
    per_row,
    per_row.take(members),
  ):  # a population view may hold a row several times, or none
    want = [int(view.online_mask(t).sum()) for t in times]
    assert view.online_counts(times).tolist() == want
    assert view.online_counts(np.array(times).reshape(-1, 1)).tolist() == want


@settings(max_examples=60, deadline=None)
@given(interval_lists(), st.floats(0, 5 * P))
def test_online_until_is_the_end_of_the_on_run(clients, t):
  av = build(clients)
  until = av.online_until(np.arange(len(clients)), t)
  for c, u in zip(clients, until):
    if not ref_online(c, t):
      assert u == -np.inf
    elif u == np.inf:
      assert c == [(0.0, P)]
    else:
      assert u >= t
      assert ref_online_throughout(c, t, u)
      # The on-run really ends at u: a gap starts there.
      # (At the period end, time P is time 0 of the next period: the run
      # ends just before it.)
      assert any((g0 == u or np.nextafter(g0, -np.inf) == u) and g1 > g0 for g0, g1 in ref_gaps(c, t, u + 1))


@settings(max_examples=40, deadline=None)
@given(interval_lists(), st.floats(0, 3 * P))
def test_next_online_time(clients, t):
  av = build(clients)
  got = av.next_online_time(t)
  if not any(clients):
    assert got == math.inf
    return
  assert got >= t
  assert any(ref_online(c, got) for c in clients)
  # Nobody is online strictly between t and got (check the midpoint).
  if got > t:
    mid = (t + got) / 2
    assert not any(ref_online(c, mid) for c in clients)


def test_period_end_is_the_next_period_start():
  av = build([[(90.0, 100.0)]])
  assert not av.is_online([0], 100.0)[0]
  assert av.online_until([0], 95.0)[0] == np.nextafter(100.0, 0)


def test_wrap_around_joins_the_period_end_and_start():
  av = build([[(0.0, 10.0), (90.0, 100.0)]])
  assert av.online_until([0], 95.0)[0] == 110.0
  assert av.online_until([0], 195.0)[0] == 210.0
  assert av.online_until([0], 5.0)[0] == 10.0
  always = build([[(0.0, 100.0)]])
  assert always.online_until([0], 42.0)[0] == np.inf


def test_touching_intervals_merge():
  av = build([[(0.0, 10.0), (10.0, 20.0), (30.0, 40.0)]])
  assert av.starts.tolist() == [0.0, 30.0]
  assert av.ends.tolist() == [20.0, 40.0]
  assert av.online_until([0], 5.0)[0] == 20.0


def test_population_view_shares_intervals():
  av = build([[(0.0, 10.0)], [(50.0, 60.0)]])
  pop = av.take([1, 0, 1, 1])
  assert pop.num_clients == 4
  assert pop.starts is av.starts
  assert pop.is_online(np.arange(4), 55.0).tolist() == [True, False, True, True]
  assert pop.online_mask(5.0).tolist() == [False, True, False, False]


def test_per_client_periods():
  av = Availability.from_intervals([0, 1, 2], [0.0, 0.0], [5.0, 5.0], [10.0, 20.0])
  assert av.is_online([0, 1], 12.0).tolist() == [True, False]


def test_float32_storage_queries():
  av = Availability.from_intervals([0, 1], np.array([100], np.int32), np.array([200], np.int32), 604800.0)
  assert av.starts.dtype == np.float32
  assert av.is_online([0], 604800.0 * 3 + 150.5)[0]
  assert not av.is_online([0], 200.5)[0]


@pytest.mark.parametrize("t", [0.0, 37.5])
def test_no_intervals_means_never_online(t):
  av = build([[], []])
  assert not av.is_online([0, 1], t).any()
  assert av.next_online_time(t) == math.inf
