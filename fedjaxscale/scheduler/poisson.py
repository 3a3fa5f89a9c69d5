"""Poisson selection: every online client joins a round independently with probability q.

The sampling that privacy accountants assume for DP-SGD and DP-FedAvg (``PoissonSampledDpEvent``
in dp-accounting): the cohort's size varies from round to round (binomial, mean ``q N`` when every
client is online). A client offline at the round's start cannot be sampled: its coin is still
drawn (so the draws of the others do not depend on who is online) and discarded. The engine keeps
its compiled shapes fixed by padding the variable cohort with masked lanes.

Used with `SyncPlanner`: the policy sets ``takes_all``, so the planner asks every sampled
client and aggregates every one that finishes (by the deadline, if one is set) instead of the
first K; a round that samples nobody is a round with no clients.
"""

from __future__ import annotations

import numpy as np

from fedjaxscale.scheduler.selection import SelectionPolicy
from fedjaxscale.systems.availability import Availability


class PoissonSelection(SelectionPolicy):
  """Independent Bernoulli(q) inclusion of each online client.

  Args:
    rate: q, in (0, 1].

  Example:
    >>> policy = PoissonSelection(0.01)  # doctest: +SKIP
    >>> planner = SyncPlanner(traces, lm, SyncConfig(k), policy=policy)  # doctest: +SKIP
  """

  name = "poisson"
  takes_all = True  # SyncPlanner: aggregate every sampled client that finishes, not the first K

  def __init__(self, rate: float):
    if not 0 < rate <= 1:
      raise ValueError(f"the Poisson sampling rate must be in (0, 1], got {rate}")
    self.rate = float(rate)

  def select(
    self,
    rng: np.random.Generator,
    availability: Availability,
    t: float,
    num: int,
    round_index: int,
    exclude: np.ndarray | None = None,
  ) -> np.ndarray:
    """Every client with its coin up and online at ``t`` (``num`` is ignored), in random order."""
    del num, round_index
    coins = rng.random(availability.num_clients) < self.rate
    chosen = np.flatnonzero(coins)
    if chosen.size:
      ok = availability.is_online(chosen, t)
      if exclude is not None:
        ok &= ~exclude[chosen]
      chosen = chosen[ok]
    return rng.permutation(chosen).astype(np.int64)

  def state_dict(self) -> dict:
    return {"name": self.name, "rate": self.rate}
