"""The run's privacy ledger gives exactly what dp-accounting gives for the same events."""

import dp_accounting
import numpy as np
import pytest

from fedjaxscale.training import privacy

DELTA = 1e-5


@pytest.mark.parametrize("kind", ["rdp", "pld"])
def test_poisson_ledger_equals_dp_accounting(kind):
  q, z, n = 0.05, 1.1, 200
  ledger = privacy.RunPrivacy(z, DELTA, kind, True, q, n)
  got = [ledger.record_round(0, np.arange(10), np.arange(8)) for _ in range(4)]
  for r, eps in enumerate(got, start=1):
    acc = (
      dp_accounting.rdp.RdpAccountant()
      if kind == "rdp"
      else dp_accounting.pld.PLDAccountant(dp_accounting.NeighboringRelation.ADD_OR_REMOVE_ONE)
    )
    acc.compose(dp_accounting.PoissonSampledDpEvent(q, dp_accounting.GaussianDpEvent(z)), r)
    assert eps == pytest.approx(acc.get_epsilon(DELTA), rel=1e-6 if kind == "rdp" else 1e-3)
  assert got == sorted(got) and got[0] > 0
  assert ledger.participation()["aggregated_rate_max"] == 1.0  # clients 0..7 in every round
  assert "Poisson sampling at rate q=0.05" in ledger.guarantee() and "independent of its data" in ledger.guarantee()


def test_fixed_size_ledger_composes_the_runs_own_pools():
  z = 1.0
  pools, samples = [80, 120, 95], [13, 13, 9]
  ledger = privacy.RunPrivacy(z, DELTA, "rdp", False, 0.0, 500)
  for pool, m in zip(pools, samples):
    eps = ledger.record_round(pool, np.arange(m), np.arange(min(m, 10)))
  acc = dp_accounting.rdp.RdpAccountant(neighboring_relation=dp_accounting.NeighboringRelation.REPLACE_ONE)
  for pool, m in zip(pools, samples):
    # Replace-one moves the sum by up to 2C: the multiplier against that sensitivity is z / 2.
    acc.compose(dp_accounting.SampledWithoutReplacementDpEvent(pool, m, dp_accounting.GaussianDpEvent(z / 2)))
  assert eps == pytest.approx(acc.get_epsilon(DELTA), rel=1e-9)
  assert ledger.summary()["mean_pool"] == pytest.approx(np.mean(pools))


def test_ledger_round_trips_through_state_dict():
  for poisson, kind in ((True, "pld"), (False, "rdp")):
    a = privacy.RunPrivacy(0.8, DELTA, kind, poisson, 0.1, 50)
    for pool in (40, 45):
      a.record_round(pool, np.arange(5), np.arange(4))
    b = privacy.RunPrivacy(0.8, DELTA, kind, poisson, 0.1, 50)
    b.load_state_dict(a.state_dict())
    assert b.epsilon() == a.epsilon()
    assert b.record_round(42, np.arange(5), np.arange(3)) == a.record_round(42, np.arange(5), np.arange(3))
    np.testing.assert_array_equal(a.aggregated, b.aggregated)


def test_noise_for_epsilon_meets_the_target():
  z = privacy.noise_for_epsilon(3.0, DELTA, rounds=100, rate=0.02)
  assert privacy.epsilon_for(privacy.poisson_event(0.02, z), 100, DELTA) == pytest.approx(3.0, abs=2e-3)
  assert privacy.epsilon_for(privacy.poisson_event(0.02, z * 0.9), 100, DELTA) > 3.0
  z_fixed = privacy.noise_for_epsilon(3.0, DELTA, rounds=50, rate=0.02, poisson=False, population=1000)
  eps = privacy.epsilon_for(privacy.fixed_size_event(1000, 20, z_fixed), 50, DELTA)
  assert eps == pytest.approx(3.0, abs=2e-3)


def test_no_noise_is_infinite_epsilon():
  for kind in ("rdp", "pld"):
    ledger = privacy.RunPrivacy(0.0, DELTA, kind, True, 0.1, 10)
    assert ledger.record_round(0, np.arange(1), np.arange(1)) == np.inf
