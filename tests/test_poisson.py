"""Poisson selection: the realized rate matches q, inclusions are independent, offline clients
are never sampled, and the synchronous planner aggregates every sampled client that finishes."""

import numpy as np
import pytest

from fedjaxscale.scheduler import PoissonSelection, Status, SyncConfig, SyncPlanner, make_rng
from fedjaxscale.systems import Availability, LatencyModel, SystemTraces


def always_online(n, period=1000.0):
  return Availability.from_intervals(np.arange(n + 1), np.zeros(n), np.full(n, period), period)


def test_rate_matches_q_and_inclusions_are_independent():
  n, q, rounds = 200, 0.1, 3000
  policy, rng, av = PoissonSelection(q), make_rng(0), always_online(n)
  inc = np.zeros((rounds, n), bool)
  for r in range(rounds):
    inc[r, policy.select(rng, av, 0.0, 0, r)] = True
  rate = inc.mean(0)
  # Per client: binomial(3000, 0.1) has std 0.0055; 5 std everywhere, and the overall mean tighter.
  assert np.all(np.abs(rate - q) < 5 * np.sqrt(q * (1 - q) / rounds))
  assert abs(rate.mean() - q) < 5 * np.sqrt(q * (1 - q) / (rounds * n))
  # Independence: the joint inclusion of two clients is q^2 (correlations near 0), and a round's
  # size is binomial(n, q) (variance n q (1 - q), which dependent draws would not give).
  corr = np.corrcoef(inc[:, :50].T.astype(float))
  off = corr[~np.eye(50, dtype=bool)]
  assert np.abs(off).max() < 0.1 and abs(off.mean()) < 0.01
  sizes = inc.sum(1)
  assert sizes.var() == pytest.approx(n * q * (1 - q), rel=0.1)
  joint = np.mean(inc[:, 0] & inc[:, 1])
  assert joint == pytest.approx(q * q, abs=4 * np.sqrt(q * q / rounds))


def test_offline_clients_are_never_sampled():
  n = 100
  starts = np.where(np.arange(n) % 2 == 0, 0.0, 500.0)
  av = Availability.from_intervals(np.arange(n + 1), starts, starts + 400.0, 1000.0)
  policy, rng = PoissonSelection(0.5), make_rng(1)
  for _ in range(50):
    got = policy.select(rng, av, 10.0, 0, 0)
    assert np.all(got % 2 == 0) and np.unique(got).size == got.size


def test_bad_rate():
  for q in (0.0, -0.1, 1.5):
    with pytest.raises(ValueError, match="rate"):
      PoissonSelection(q)


def test_sync_planner_takes_every_finisher_and_survives_empty_rounds():
  n = 50
  traces = SystemTraces.create(np.full(n, 1.0), np.full(n, 1e4), np.full(n, 1e3), always_online(n, 1e6))
  lm = LatencyModel(32_000, local_steps=1, batch_size=1)
  planner = SyncPlanner(traces, lm, SyncConfig(5), policy=PoissonSelection(0.3), seed=0)
  sizes = [planner.plan_round() for _ in range(30)]
  for plan in sizes:
    assert np.all(plan.status == Status.AGGREGATED)  # always online: everyone sampled finishes
  assert len({len(p.clients) for p in sizes}) > 3  # the cohort's size varies
  tiny = SyncPlanner(traces, lm, SyncConfig(1), policy=PoissonSelection(1e-4), seed=0)
  plan = tiny.plan_round()
  assert plan.clients.size == 0 and plan.aggregated.size == 0 and plan.end_time == plan.start_time
