"""Selection policies, the clock, RNG state, and edge cases of the planners."""

import numpy as np
import pytest

from fedjaxscale.scheduler import (
  AsyncConfig,
  AsyncPlanner,
  Clock,
  OortSelection,
  Status,
  SyncConfig,
  SyncPlanner,
  make_rng,
  rng_from_state_dict,
  rng_state_dict,
  sample_online,
)
from fedjaxscale.systems import Availability, LatencyModel, SystemTraces, generate_traces


def half_online(n):
  """Even clients online in [0, 50], odd ones in [50, 100] (period 100)."""
  starts = np.where(np.arange(n) % 2 == 0, 0.0, 60.0)
  return Availability.from_intervals(np.arange(n + 1), starts, starts + 40.0, 100.0)


@pytest.mark.parametrize("num", [1, 10, 100, 499, 500, 800])
def test_sample_online_is_distinct_and_online(num):
  av = half_online(1000)
  got = sample_online(make_rng(0), av, 10.0, num)
  assert got.size == min(num, 500)
  assert np.unique(got).size == got.size
  assert np.all(got % 2 == 0)


def test_sample_online_respects_exclude_and_is_roughly_uniform():
  av = half_online(20)
  exclude = np.zeros(20, bool)
  exclude[[0, 2]] = True
  rng = make_rng(1)
  counts = np.zeros(20)
  for _ in range(2000):
    counts[sample_online(rng, av, 10.0, 2, exclude)] += 1
  assert counts[[0, 2]].sum() == 0 and counts[1::2].sum() == 0
  # 8 eligible clients, 2 picks each time: 500 expected per client.
  assert np.all(np.abs(counts[4::2] - 500) < 100)


def test_nobody_online_moves_the_clock_to_the_next_online_time():
  av = Availability.from_intervals([0, 1, 2], [30.0, 70.0], [40.0, 80.0], 100.0)
  traces = SystemTraces.create([1.0, 1.0], [1e4, 1e4], [1e4, 1e4], av)
  lm = LatencyModel(model_bits=1000, local_steps=1, batch_size=1)
  planner = SyncPlanner(traces, lm, SyncConfig(1), start_time=45.0)
  plan = planner.plan_round()
  assert plan.start_time == 70.0 and plan.clients.tolist() == [1]
  assert plan.status.tolist() == [Status.AGGREGATED]


def test_deadline_stragglers_and_partial_work():
  av = Availability.from_intervals([0, 1, 2, 3], [0.0] * 3, [100.0] * 3, 100.0)
  # 1 s download and upload; compute 3, 9 and 30 s.
  traces = SystemTraces.create([100.0, 300.0, 1000.0], [1000.0] * 3, [1000.0] * 3, av)
  lm = LatencyModel(model_bits=1_000_000, local_steps=1, batch_size=10)
  plan = SyncPlanner(traces, lm, SyncConfig(3, overcommit=1.0, deadline_s=12.0)).plan_round()
  by = dict(zip(plan.clients.tolist(), zip(plan.status, plan.completed_fraction)))
  assert by[0] == (Status.AGGREGATED, 1.0)
  assert by[1] == (Status.AGGREGATED, 1.0)
  # Client 2 could compute from 1 s to 11 s and upload by 12 s: 10 of 30 s.
  assert by[2][0] == Status.STRAGGLER
  assert by[2][1] == pytest.approx(10 / 30)
  assert plan.end_time == 12.0 and plan.short


def test_clock_is_monotone():
  clock = Clock(5.0)
  clock.advance_to(7.5)
  assert clock.now == 7.5
  with pytest.raises(ValueError):
    clock.advance_to(7.0)


def test_rng_state_round_trip():
  rng = make_rng(123)
  rng.random(7)
  state = rng_state_dict(rng)
  assert state["state"].dtype == np.uint64
  want = rng.integers(0, 1 << 40, 10)
  np.testing.assert_array_equal(rng_from_state_dict(state).integers(0, 1 << 40, 10), want)


@pytest.fixture(scope="module")
def population():
  traces = generate_traces(3000, seed=2)
  samples = np.random.default_rng(0).integers(10, 400, traces.num_clients)
  lm = LatencyModel(model_bits=8_000_000, local_steps=10, batch_size=20)
  return traces, samples, lm


def oort(traces, samples, lm):
  durations = lm.latency(traces, np.arange(traces.num_clients), samples).total
  return OortSelection(samples, durations, samples_cap=200)


def run_oort(planner, rounds, loss_of):
  plans = []
  for _ in range(rounds):
    plan = planner.plan_round()
    planner.report(plan, loss_of(plan.aggregated))
    plans.append(plan)
  return plans


def test_oort_exploits_high_loss_clients(population):
  traces, samples, lm = population
  # Everyone always online and equally fast (no speed penalty), to isolate
  # the statistical utility.
  n = traces.num_clients
  traces = SystemTraces.create(
    np.full(n, 50.0),
    np.full(n, 5000.0),
    np.full(n, 5000.0),
    Availability.from_intervals([0, 1], [0.0], [1.0], 1.0).take(np.zeros(traces.num_clients, np.int64)),
  )
  high = np.arange(traces.num_clients) % 10 == 0  # 10% have high loss
  # Utility = samples x sqrt(mean squared loss): 2x for the high ones.
  loss_of = lambda c: np.where(high[c], 4.0, 1.0)
  samples = np.full(traces.num_clients, 200)
  policy = oort(traces, samples, lm)
  planner = SyncPlanner(traces, lm, SyncConfig(30), num_samples=samples, policy=policy, seed=0)
  picked = []
  run_oort(planner, 30, loss_of)
  for _ in range(10):
    run_oort(planner, 1, loss_of)
    picked.append(policy.exploit_clients)
  picked = np.concatenate(picked)
  assert picked.size > 0
  assert high[picked].mean() > 0.3  # the base rate is 10%


def test_oort_state_round_trip_gives_same_plans(population):
  traces, samples, lm = population
  loss_of = lambda c: (c % 7).astype(float) + 0.5
  make = lambda seed: SyncPlanner(
    traces, lm, SyncConfig(15), num_samples=samples, policy=oort(traces, samples, lm), seed=seed
  )
  a = make(0)
  run_oort(a, 4, loss_of)
  state = a.state_dict()
  want = run_oort(a, 4, loss_of)
  b = make(9)
  b.load_state_dict(state)
  got = run_oort(b, 4, loss_of)
  for p, q in zip(want, got):
    np.testing.assert_array_equal(p.clients, q.clients)
    np.testing.assert_array_equal(p.status, q.status)
    assert p.end_time == q.end_time


def test_oort_update_validates_input(population):
  traces, samples, lm = population
  policy = oort(traces, samples, lm)
  with pytest.raises(ValueError):
    policy.update(0, np.array([1, 2]), np.array([1.0]), np.array([1.0, 2.0]))
  with pytest.raises(ValueError):
    policy.update(0, np.array([1]), np.array([np.nan]), np.array([1.0]))


def test_async_planner_on_generated_traces(population):
  traces, samples, lm = population
  planner = AsyncPlanner(traces, lm, AsyncConfig(10, 50), num_samples=samples)
  for v in range(5):
    plan = planner.next_plan()
    assert plan.version == v and plan.step_clients.size == 10
  assert planner.state_dict()["records_int"].shape[0] == 5
