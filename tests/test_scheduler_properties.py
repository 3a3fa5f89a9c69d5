"""Hypothesis properties of the sync and async planners on tiny traces."""

import numpy as np
from hypothesis import assume, given, settings
from hypothesis import strategies as st

from fedjaxscale.scheduler import AsyncConfig, AsyncPlanner, Status, SyncConfig, SyncPlanner
from fedjaxscale.systems import Availability, LatencyModel, SystemTraces

P = 100.0


@st.composite
def populations(draw, max_clients=10, always_on=False):
  n = draw(st.integers(1, max_clients))
  intervals = []
  for _ in range(n):
    cuts = sorted(draw(st.sets(st.integers(0, int(P)), max_size=8)))
    cuts = cuts[: len(cuts) // 2 * 2]
    intervals.append([(float(a), float(b)) for a, b in zip(cuts[::2], cuts[1::2])])
  if always_on:  # someone can always finish, so async always progresses
    intervals[draw(st.integers(0, n - 1))] = [(0.0, P)]
  assume(any(intervals))
  counts = [len(c) for c in intervals]
  av = Availability.from_intervals(
    np.concatenate([[0], np.cumsum(counts)]).astype(np.int64),
    [a for c in intervals for a, _ in c],
    [b for c in intervals for _, b in c],
    P,
  )
  ms = draw(st.lists(st.floats(1, 1000), min_size=n, max_size=n))
  kbps = draw(st.lists(st.floats(10, 10_000), min_size=n, max_size=n))
  return SystemTraces.create(ms, kbps, kbps, av), intervals


LM = LatencyModel(model_bits=100_000, local_steps=2, batch_size=5)


def ref_online(iv, t):
  x = t % P
  return any(a <= x <= b for a, b in iv)


def ref_online_throughout(iv, a, b):
  """No off-gap of the periodic trace meets [a, b]."""
  if not (ref_online(iv, a) and ref_online(iv, b)):
    return False
  for k in range(int(a // P) - 1, int(b // P) + 2):
    base = k * P
    gaps = [(base + e, base + s) for (_, e), (s, _) in zip(iv[:-1], iv[1:])]
    if not (iv[-1][1] == P and iv[0][0] == 0):
      gaps.append((base + iv[-1][1], base + P + iv[0][0]))
    if any(g0 < b and g1 > a for g0, g1 in gaps):
      return False
  return True


sync_configs = st.builds(
  SyncConfig,
  clients_per_round=st.integers(1, 5),
  overcommit=st.sampled_from([1.0, 1.3, 2.0]),
  deadline_s=st.one_of(st.none(), st.floats(5, 60)),
  availability_mode=st.sampled_from(["window", "endpoints"]),
)


def plans_equal(a, b):
  da, db = a.to_dict(), b.to_dict()
  assert da.keys() == db.keys()
  for k in da:
    np.testing.assert_array_equal(np.asarray(da[k]), np.asarray(db[k]), err_msg=k)


@settings(max_examples=50, deadline=None)
@given(populations(), sync_configs, st.floats(0, 300), st.integers(0, 2**31))
def test_sync_round_properties(pop, cfg, start, seed):
  traces, intervals = pop
  planner = SyncPlanner(traces, LM, cfg, seed=seed, start_time=start)
  prev_end = start
  for _ in range(4):
    plan = planner.plan_round()
    # The clock never goes back.
    assert plan.start_time >= prev_end and plan.end_time >= plan.start_time
    assert planner.clock.now == plan.end_time
    prev_end = plan.end_time
    assert len(set(plan.clients.tolist())) == plan.clients.size
    assert plan.clients.size <= cfg.num_selected
    for c, s, f in zip(plan.clients, plan.status, plan.finish):
      assert ref_online(intervals[c], plan.start_time)  # online when asked
      if s == Status.AGGREGATED:
        if cfg.availability_mode == "window":
          # Never offline inside its window.
          assert ref_online_throughout(intervals[c], plan.start_time, f)
        else:
          assert ref_online(intervals[c], f)
    agg = plan.status == Status.AGGREGATED
    assert np.array_equal(np.sort(plan.aggregated), np.sort(plan.clients[agg]))
    assert np.all(plan.weights == agg)
    assert np.all((plan.completed_fraction >= 0) & (plan.completed_fraction <= 1))
    assert np.all(plan.completed_fraction[agg] == 1)
    assert plan.short == (agg.sum() < cfg.clients_per_round)
    if cfg.deadline_s is None:
      assert agg.sum() <= cfg.clients_per_round
      if agg.any():
        # The round lasts until the K-th (or last) aggregated finish...
        assert plan.end_time == plan.finish[agg].max()
        # ...and those are the earliest finishers that did not drop.
        others = ~agg & np.isinf(plan.drop_time)
        if cfg.availability_mode == "window":
          assert np.all(plan.finish[others] >= plan.end_time)
    else:
      assert plan.end_time == plan.start_time + cfg.deadline_s
      assert np.all(plan.finish[agg] <= plan.end_time)
      assert not np.any(np.isinf(plan.drop_time) & ~agg & (plan.finish <= plan.end_time))


@settings(max_examples=30, deadline=None)
@given(populations(), sync_configs, st.integers(0, 2**31), st.integers(0, 3))
def test_sync_same_seed_and_restore_give_same_plans(pop, cfg, seed, cut):
  traces, _ = pop
  a = SyncPlanner(traces, LM, cfg, seed=seed)
  b = SyncPlanner(traces, LM, cfg, seed=seed)
  plans = [a.plan_round() for _ in range(5)]
  for p in plans:
    plans_equal(p, b.plan_round())
  c = SyncPlanner(traces, LM, cfg, seed=seed)
  for _ in range(cut):
    c.plan_round()
  state = c.state_dict()
  d = SyncPlanner(traces, LM, cfg, seed=seed + 1)  # seed is overwritten
  d.load_state_dict(state)
  for p in plans[cut:]:
    plans_equal(p, d.plan_round())


async_configs = st.builds(
  AsyncConfig,
  buffer_size=st.integers(1, 4),
  max_concurrency=st.integers(1, 6),
  max_staleness=st.integers(0, 3),
  availability_mode=st.sampled_from(["window", "start", "endpoints"]),
)


@settings(max_examples=40, deadline=None)
@given(populations(always_on=True), async_configs, st.integers(0, 2**31))
def test_async_properties(pop, cfg, seed):
  traces, intervals = pop
  planner = AsyncPlanner(traces, LM, cfg, seed=seed)
  accepted, members = [], []
  prev_step_time = 0.0
  for v in range(6):
    plan = planner.next_plan()
    assert plan.version == v
    ok = plan.status == Status.ACCEPTED
    # Never accepts an update staler than the bound.
    assert np.all(plan.staleness[ok] <= cfg.max_staleness)
    assert np.all(plan.staleness[plan.status == Status.DISCARDED] > cfg.max_staleness)
    np.testing.assert_allclose(plan.weight[ok], 1 / np.sqrt(1 + plan.staleness[ok]))
    assert np.all(plan.weight[~ok] == 0)
    assert np.all(plan.arrival_step[ok] >= v)
    # Cohort members started while version v was current.
    assert np.all(plan.start >= prev_step_time)
    assert np.all(plan.start <= plan.step_time)
    assert plan.step_time >= prev_step_time
    prev_step_time = plan.step_time
    assert plan.step_clients.size == cfg.buffer_size
    assert np.all(plan.step_start_versions <= v)
    assert np.all(v - plan.step_start_versions <= cfg.max_staleness)
    for c, s, t0, f in zip(plan.clients, plan.status, plan.start, plan.finish):
      assert ref_online(intervals[c], t0)
      if s == Status.ACCEPTED and cfg.availability_mode == "window":
        assert ref_online_throughout(intervals[c], t0, f)
      if s == Status.ACCEPTED and cfg.availability_mode == "endpoints":
        assert ref_online(intervals[c], f)
    accepted += [(int(c), v, int(a)) for c, a in zip(plan.clients[ok], plan.arrival_step[ok])]
    members += [(int(c), int(sv), v) for c, sv in zip(plan.step_clients, plan.step_start_versions)]
  # Steps 0..5 consist exactly of the accepted updates arriving in them.
  assert sorted(members) == sorted(a for a in accepted if a[2] <= 5)


@settings(max_examples=30, deadline=None)
@given(populations(always_on=True), async_configs, st.integers(0, 2**31), st.integers(0, 3))
def test_async_same_seed_and_restore_give_same_plans(pop, cfg, seed, cut):
  traces, _ = pop
  a = AsyncPlanner(traces, LM, cfg, seed=seed)
  plans = [a.next_plan() for _ in range(5)]
  b = AsyncPlanner(traces, LM, cfg, seed=seed)
  for p in plans:
    plans_equal(p, b.next_plan())
  c = AsyncPlanner(traces, LM, cfg, seed=seed)
  for _ in range(cut):
    c.next_plan()
  d = AsyncPlanner(traces, LM, cfg, seed=seed + 7)
  d.load_state_dict(c.state_dict())
  for p in plans[cut:]:
    plans_equal(p, d.next_plan())
