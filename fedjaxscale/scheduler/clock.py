"""The simulated clock: seconds since the start of the simulation."""

from __future__ import annotations

import math


class Clock:
  """A monotone simulated clock.

  Time is float seconds since the simulation started, in the same frame as
  the traces (trace time = clock mod period). It only moves forward.
  """

  def __init__(self, now: float = 0.0):
    if not math.isfinite(now) or now < 0:
      raise ValueError(f"clock must start at a finite time >= 0, got {now}")
    self._now = float(now)

  @property
  def now(self) -> float:
    return self._now

  def advance_to(self, t: float) -> None:
    """Moves the clock to ``t``; raises if that is in the past."""
    t = float(t)
    if not t >= self._now or math.isnan(t):
      raise ValueError(f"the clock cannot go back from {self._now} to {t}")
    self._now = t
