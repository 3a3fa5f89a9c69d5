"""Selection policies: which online clients a round asks to train.

A policy has one method that picks clients and one that learns from a round's
results; its state round-trips through `state_dict` / `load_state_dict`.
Randomness always comes from the planner's generator, passed in.
"""

from __future__ import annotations

import math

import numpy as np

from fedjaxscale.systems.availability import Availability

# Rejection-sampling batches tried before falling back to a full scan.
_MAX_BATCHES = 4


class SelectionPolicy:
  """The interface of a selection policy."""

  name = "base"

  def select(
    self,
    rng: np.random.Generator,
    availability: Availability,
    t: float,
    num: int,
    round_index: int,
    exclude: np.ndarray | None = None,
  ) -> np.ndarray:
    """Picks up to ``num`` distinct clients online at ``t``.

    Args:
      rng: the planner's generator (advanced by the call).
      availability: the population's availability.
      t: simulated time (seconds).
      num: how many to pick; fewer come back only if fewer are online.
      round_index: the planner's round (sync) or model version (async).
      exclude: optional bool ``[N]``: clients that may not be picked (busy).

    Returns:
      int64 population indices, in selection order.
    """
    raise NotImplementedError

  def update(self, round_index: int, clients, mean_sq_losses, durations) -> None:
    """Feedback after a round: the clients that reported, the mean over
    their trained examples of the squared per-example loss (from the
    engine), and their round durations in seconds. Default: ignored."""
    del round_index, clients, mean_sq_losses, durations

  def state_dict(self) -> dict:
    return {"name": self.name}

  def load_state_dict(self, state: dict) -> None:
    if str(state.get("name")) != self.name:
      raise ValueError(f"state is for policy {state.get('name')!r}, this is {self.name!r}")


class UniformSelection(SelectionPolicy):
  """Uniformly random among the clients online now, without replacement."""

  name = "uniform"

  def select(self, rng, availability, t, num, round_index, exclude=None):
    del round_index
    return sample_online(rng, availability, t, num, exclude)


def sample_online(
  rng: np.random.Generator, availability: Availability, t: float, num: int, exclude: np.ndarray | None = None
) -> np.ndarray:
  """``num`` distinct clients drawn uniformly from those online at ``t``.

  Draws candidates uniformly from the whole population and keeps the first
  distinct online ones (an exactly uniform sample without replacement),
  checking only the candidates' own intervals; so a round costs
  O(num / online share), not O(N). If a few batches do not find enough,
  scans everyone once and fills up from the rest.

  Returns:
    int64 indices in selection order (all online clients, shuffled, if fewer
    than ``num`` are online).
  """
  n = availability.num_clients
  if num <= 0 or n == 0:
    return np.zeros(0, np.int64)
  found = np.zeros(0, np.int64)
  rate = 0.5
  for _ in range(_MAX_BATCHES):
    need = num - found.size
    size = max(math.ceil(2.0 * need / rate) + 16, 64)
    if size >= n:  # as dear as checking everyone: scan instead
      break
    cand = rng.integers(0, n, size=size)
    ok = availability.is_online(cand, t)
    if exclude is not None:
      ok &= ~exclude[cand]
    rate = max(float(ok.mean()), 1.0 / size)
    found = _first_distinct(np.concatenate([found, cand[ok]]))
    if found.size >= num:
      return found[:num]
  # Few clients online: scan everyone and complete the sample from the rest.
  pool = availability.online_mask(t)
  if exclude is not None:
    pool &= ~exclude
  pool[found] = False
  rest = np.flatnonzero(pool)
  need = num - found.size
  if rest.size > need:
    rest = rng.choice(rest, size=need, replace=False)
  else:
    rest = rng.permutation(rest)
  return np.concatenate([found, rest.astype(np.int64)])


def _first_distinct(x: np.ndarray) -> np.ndarray:
  """Distinct values of ``x`` in order of first appearance."""
  _, first = np.unique(x, return_index=True)
  return x[np.sort(first)]
