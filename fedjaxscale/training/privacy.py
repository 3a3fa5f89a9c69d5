"""Privacy accounting for DP-FedAvg runs, with Google's ``dp-accounting`` library.

Each round of DP-FedAvg is a sampled Gaussian mechanism on the clients' clipped updates (user
level: the unit is a client's whole data set). Which sampled event it is depends on how the run
chose its clients, and the accountant is given exactly that:

* ``system.selection='poisson'``: every online client joins independently with probability q:
  ``PoissonSampledDpEvent(q, GaussianDpEvent(z))``, add/remove-one neighbouring relation (the
  noise std ``z C`` is z times the sum's sensitivity C); RDP or PLD accountant.
* ``system.selection='random'``: a round asks a uniform sample without replacement of
  ``m_t`` of the ``n_t`` clients online at its start:
  ``SampledWithoutReplacementDpEvent(n_t, m_t, GaussianDpEvent(z / 2))``, replace-one relation
  (replacing a client's data moves the sum by up to 2C, so the multiplier against that
  sensitivity is z / 2); RDP only (dp-accounting's PLD does not take this event). ``n_t`` and
  ``m_t`` are the run's own, round by round.

In both cases only clients online at the round's start can be sampled, and of the sampled ones
only those that finish are aggregated (the first K, or all by the deadline). The reported
epsilon is valid *under the assumption that availability, device speed and drop-outs are
independent of the clients' data* (the system traces are public information): then a round's
aggregated set is a data-independent subset of the sampled set, and an offline client's round
reveals nothing about it. The run reports each client's realized participation rate beside
epsilon so the assumption's effect is visible; a config whose sampling is not one of these
events (Oort selection uses training losses; asynchronous FedBuff steps) is refused rather than
given an epsilon it does not have.
"""

from __future__ import annotations

import dataclasses
import math
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
  import dp_accounting

# dp_accounting (with scipy) takes seconds to import: functions import it when a DP run needs it.

ACCOUNTANTS = ("rdp", "pld")


def _accountant(kind: str, relation):
  import dp_accounting  # pylint: disable=g-import-not-at-top

  if kind == "rdp":
    return dp_accounting.rdp.RdpAccountant(neighboring_relation=relation)
  if kind == "pld":
    return dp_accounting.pld.PLDAccountant(neighboring_relation=relation)
  raise ValueError(f"unknown accountant {kind!r}; expected one of {ACCOUNTANTS}")


def poisson_event(rate: float, noise_multiplier: float) -> dp_accounting.DpEvent:
  """One Poisson-sampled DP-FedAvg round (add/remove one client)."""
  import dp_accounting  # pylint: disable=g-import-not-at-top

  return dp_accounting.PoissonSampledDpEvent(rate, dp_accounting.GaussianDpEvent(noise_multiplier))


def fixed_size_event(pool: int, sample: int, noise_multiplier: float) -> dp_accounting.DpEvent:
  """One round sampling ``sample`` of ``pool`` without replacement (replace one client)."""
  import dp_accounting  # pylint: disable=g-import-not-at-top

  return dp_accounting.SampledWithoutReplacementDpEvent(
    int(pool), int(sample), dp_accounting.GaussianDpEvent(noise_multiplier / 2.0)
  )


def epsilon_for(event: dp_accounting.DpEvent, rounds: int, delta: float, accountant: str = "rdp", relation=None):
  """Epsilon at ``delta`` after ``rounds`` repetitions of ``event``, straight from dp-accounting."""
  import dp_accounting  # pylint: disable=g-import-not-at-top

  if relation is None:
    relation = (
      dp_accounting.NeighboringRelation.REPLACE_ONE
      if isinstance(event, dp_accounting.SampledWithoutReplacementDpEvent)
      else dp_accounting.NeighboringRelation.ADD_OR_REMOVE_ONE
    )
  acc = _accountant(accountant, relation)
  acc.compose(event, int(rounds))
  return float(acc.get_epsilon(delta))


def noise_for_epsilon(
  target_epsilon: float,
  delta: float,
  rounds: int,
  rate: float,
  accountant: str = "rdp",
  *,
  poisson: bool = True,
  population: int | None = None,
) -> float:
  """The smallest noise multiplier z whose ``rounds`` rounds at sampling rate ``rate`` stay
  within ``(target_epsilon, delta)`` (``dp_accounting.calibrate_dp_mechanism``).

  Args:
    target_epsilon: the budget's epsilon.
    delta: the budget's delta.
    rounds: the run's rounds.
    rate: q (Poisson), or the selected fraction m / n (fixed size, then give ``population``).
    accountant: ``'rdp'`` or ``'pld'`` (Poisson only).
    poisson: Poisson (True) or fixed-size sampling without replacement.
    population: n for fixed-size sampling (the sample is ``round(rate * n)``).

  Example::

    z = noise_for_epsilon(2.0, 1e-5, rounds=500, rate=0.01)
  """
  import dp_accounting  # pylint: disable=g-import-not-at-top

  if poisson:
    make_event = lambda z: dp_accounting.SelfComposedDpEvent(poisson_event(rate, z), rounds)
    relation = dp_accounting.NeighboringRelation.ADD_OR_REMOVE_ONE
  else:
    m = max(1, round(rate * population))
    make_event = lambda z: dp_accounting.SelfComposedDpEvent(fixed_size_event(population, m, z), rounds)
    relation = dp_accounting.NeighboringRelation.REPLACE_ONE
  return float(
    dp_accounting.calibrate_dp_mechanism(
      lambda: _accountant(accountant, relation),
      make_event,
      target_epsilon,
      delta,
      dp_accounting.LowerEndpointAndGuess(1e-3, 1.0),
      tol=1e-4,
    )
  )


@dataclasses.dataclass
class RunPrivacy:
  """A run's privacy ledger: one event per round, epsilon after each, realized participation.

  Attributes:
    noise_multiplier: z.
    delta: the delta epsilon is reported at.
    accountant: ``'rdp'`` or ``'pld'``.
    poisson: Poisson sampling (``rate``) or fixed-size sampling from the online clients.
    rate: q for Poisson.
    population: N.
  """

  noise_multiplier: float
  delta: float
  accountant: str
  poisson: bool
  rate: float
  population: int

  def __post_init__(self):
    import dp_accounting  # pylint: disable=g-import-not-at-top

    self.rounds = 0
    self.pools: list[int] = []  # fixed size: clients online at each round's start
    self.samples: list[int] = []  # fixed size: clients selected each round
    self.selected = np.zeros(self.population, np.int64)  # rounds each client was sampled in
    self.aggregated = np.zeros(self.population, np.int64)  # rounds each client's update counted in
    relation = (
      dp_accounting.NeighboringRelation.ADD_OR_REMOVE_ONE
      if self.poisson
      else dp_accounting.NeighboringRelation.REPLACE_ONE
    )
    self._relation = relation
    self._rdp = _accountant("rdp", relation) if self.accountant == "rdp" else None
    self._pld = self._pld_round = None
    if self.accountant == "pld" and self.noise_multiplier > 0:
      # What PLDAccountant.compose builds for this event, built once: every round is the same.
      pld = dp_accounting.pld.privacy_loss_distribution
      self._pld_round = pld.from_gaussian_mechanism(
        standard_deviation=self.noise_multiplier,
        value_discretization_interval=1e-4,
        sampling_prob=self.rate,
        neighboring_relation=relation,
      )

  def record_round(self, pool: int, selected: np.ndarray, aggregated: np.ndarray) -> float:
    """Adds a round's event (``pool`` online clients, the ``selected`` and ``aggregated`` ones);
    returns epsilon at ``delta`` after it."""
    self.rounds += 1
    self.selected[np.asarray(selected, np.int64)] += 1
    self.aggregated[np.asarray(aggregated, np.int64)] += 1
    if not self.poisson:
      self.pools.append(int(pool))
      self.samples.append(int(len(selected)))
    self._compose(self.rounds - 1)
    return self.epsilon()

  def _compose(self, r: int) -> None:
    if self._rdp is not None:
      self._rdp.compose(self._event_of(r))
    elif self._pld_round is not None:
      self._pld = self._pld_round if self._pld is None else self._pld.compose(self._pld_round)

  def _event_of(self, r: int):
    import dp_accounting  # pylint: disable=g-import-not-at-top

    if self.poisson:
      return poisson_event(self.rate, self.noise_multiplier)
    if self.samples[r] == 0:
      return dp_accounting.NoOpDpEvent()
    return fixed_size_event(self.pools[r], self.samples[r], self.noise_multiplier)

  def epsilon(self) -> float:
    if self.rounds == 0:
      return 0.0
    if self._rdp is not None:
      return float(self._rdp.get_epsilon(self.delta))
    if self._pld is None:  # z = 0: no privacy
      return math.inf
    return float(self._pld.get_epsilon_for_delta(self.delta))

  def participation(self) -> dict:
    """Realized per-client rates over the rounds so far (aggregated / rounds, selected / rounds)."""
    r = max(self.rounds, 1)
    agg, sel = self.aggregated / r, self.selected / r
    return {
      "rounds": self.rounds,
      "aggregated_rate_mean": float(agg.mean()),
      "aggregated_rate_max": float(agg.max()) if agg.size else 0.0,
      "selected_rate_mean": float(sel.mean()),
      "selected_rate_max": float(sel.max()) if sel.size else 0.0,
      "never_aggregated_fraction": float(np.mean(self.aggregated == 0)),
    }

  def guarantee(self) -> str:
    """What the reported epsilon is, in words."""
    if self.poisson:
      sampling = (
        f"Poisson sampling at rate q={self.rate:g} of the {self.population} clients "
        "(each online client joins a round independently with probability q; offline ones cannot)"
      )
      relation = "add/remove one client's data"
    else:
      sampling = (
        "fixed-size sampling without replacement from the clients online at each round's start "
        "(the run's own pool and sample sizes, round by round)"
      )
      relation = "replace one client's data"
    return (
      f"user-level ({relation}) ({self.epsilon():.4g}, {self.delta:g})-DP by dp-accounting's "
      f"{self.accountant.upper()} accountant over {self.rounds} rounds of the Gaussian mechanism with noise "
      f"multiplier {self.noise_multiplier:g} and {sampling}. Valid under the assumption that each client's "
      "availability, speed and drop-outs are independent of its data (the system traces are public): only "
      "then is the aggregated set a data-independent subset of the sampled one. Realized participation is "
      "reported beside it."
    )

  def summary(self) -> dict:
    return {
      "epsilon": self.epsilon(),
      "delta": self.delta,
      "noise_multiplier": self.noise_multiplier,
      "accountant": self.accountant,
      "sampling": "poisson" if self.poisson else "fixed_size_from_online",
      "sampling_rate": self.rate if self.poisson else None,
      "mean_pool": float(np.mean(self.pools)) if self.pools else None,
      "mean_sample": float(np.mean(self.samples)) if self.samples else None,
      "participation": self.participation(),
      "guarantee": self.guarantee(),
    }

  def state_dict(self) -> dict:
    return {
      "rounds": self.rounds,
      "pools": np.asarray(self.pools, np.int64),
      "samples": np.asarray(self.samples, np.int64),
      "selected": self.selected.copy(),
      "aggregated": self.aggregated.copy(),
    }

  def load_state_dict(self, state: dict) -> None:
    self.__post_init__()
    self.pools = [int(x) for x in np.asarray(state["pools"]).reshape(-1)]
    self.samples = [int(x) for x in np.asarray(state["samples"]).reshape(-1)]
    self.selected = np.asarray(state["selected"], np.int64).copy()
    self.aggregated = np.asarray(state["aggregated"], np.int64).copy()
    self.rounds = int(state["rounds"])
    for r in range(self.rounds):
      self._compose(r)
