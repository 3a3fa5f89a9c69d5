"""Progress reporting for the round loop: a redrawn bar on a terminal, log lines elsewhere."""

from __future__ import annotations

import sys
import time
from collections.abc import Callable
from typing import TextIO

_BAR_WIDTH = 30
_TTY_MIN_REDRAW_S = 0.1  # redraw at most ten times a second: rounds can take milliseconds


def _hms(seconds: float | None) -> str:
  if seconds is None:
    return "-:--:--"
  s = int(round(seconds))
  return f"{s // 3600}:{s // 60 % 60:02d}:{s % 60:02d}"


class Progress:
  """Reports training progress with ETA, the latest accuracy and loss, and simulated hours.

  On a terminal one line is redrawn in place::

    [#########.....................] 30/100 ETA 0:01:23 acc 0.713 loss 0.81 sim 3.2h

  Elsewhere (a log file, CI, a notebook) a plain line is written for the first round, then at
  most every ``log_every_s`` seconds, and at the last round::

    round 30/100 (30%) elapsed 0:00:36 ETA 0:01:23 acc 0.713 loss 0.81 sim 3.2h

  Args:
    total_rounds: the round the run ends at.
    stream: where to write (default ``sys.stderr``).
    is_tty: draw the bar (default: whether ``stream`` is a terminal).
    log_every_s: minimum wall seconds between log lines when not a terminal.
    start_round: the round already done when this run starts (a resumed run); the ETA uses the
      pace of the rounds run since.
    enabled: False makes every method a no-op (non-zero processes of a multi-host run).
    clock: wall clock in seconds (for tests).

  Example::

    progress = Progress(100)
    for r in range(1, 101):
      ...
      progress.update(r, accuracy=acc, loss=loss, clock_s=clock)
    progress.close()
  """

  def __init__(
    self,
    total_rounds: int,
    *,
    stream: TextIO | None = None,
    is_tty: bool | None = None,
    log_every_s: float = 10.0,
    start_round: int = 0,
    enabled: bool = True,
    clock: Callable[[], float] = time.monotonic,
  ):
    self.total_rounds = int(total_rounds)
    self.stream = sys.stderr if stream is None else stream
    if is_tty is None:
      isatty = getattr(self.stream, "isatty", None)
      is_tty = bool(isatty and isatty())
    self.is_tty = is_tty
    self.log_every_s = float(log_every_s)
    self.start_round = int(start_round)
    self.enabled = enabled
    self._clock = clock
    self._t0 = clock()
    self._round = self.start_round
    self._accuracy = self._loss = self._clock_s = None
    self._last_write = None  # wall time of the last line or redraw
    self._written_round = None  # round shown by the last line or redraw
    self._line_len = 0  # width of the bar line now on screen (0: none)

  def update(
    self,
    round: int,
    *,
    accuracy: float | None = None,
    loss: float | None = None,  # pylint: disable=redefined-builtin
    clock_s: float | None = None,
  ) -> None:
    """Records that ``round`` finished; ``None`` values keep the last ones seen."""
    if not self.enabled:
      return
    self._round = int(round)
    if accuracy is not None:
      self._accuracy = float(accuracy)
    if loss is not None:
      self._loss = float(loss)
    if clock_s is not None:
      self._clock_s = float(clock_s)
    now = self._clock()
    last = self._round >= self.total_rounds
    wait = _TTY_MIN_REDRAW_S if self.is_tty else self.log_every_s
    if last or self._last_write is None or now - self._last_write >= wait:
      self._write(now)

  def close(self) -> None:
    """Shows the latest state if it is not on screen yet, and ends the bar's line."""
    if not self.enabled:
      return
    if self._written_round != self._round and self._round > self.start_round:
      self._write(self._clock())
    if self.is_tty and self._line_len:
      self.stream.write("\n")
      self.stream.flush()
      self._line_len = 0

  def __enter__(self) -> Progress:
    return self

  def __exit__(self, *exc) -> None:
    self.close()

  def _eta(self, now: float) -> float | None:
    done = self._round - self.start_round
    if done <= 0:
      return None
    return max(self.total_rounds - self._round, 0) * (now - self._t0) / done

  def _stats(self, now: float) -> str:
    parts = [f"ETA {_hms(self._eta(now))}"]
    if self._accuracy is not None:
      parts.append(f"acc {self._accuracy:.3f}")
    if self._loss is not None:
      parts.append(f"loss {self._loss:.3g}")
    if self._clock_s is not None:
      parts.append(f"sim {self._clock_s / 3600:.1f}h")
    return " ".join(parts)

  def _write(self, now: float) -> None:
    total = max(self.total_rounds, 1)
    frac = min(max(self._round / total, 0.0), 1.0)
    if self.is_tty:
      filled = int(frac * _BAR_WIDTH)
      line = f"[{'#' * filled}{'.' * (_BAR_WIDTH - filled)}] {self._round}/{self.total_rounds} {self._stats(now)}"
      # Pad over the previous line's tail instead of relying on terminal escape codes.
      self.stream.write("\r" + line.ljust(self._line_len))
      self._line_len = len(line)
    else:
      self.stream.write(
        f"round {self._round}/{self.total_rounds} ({frac:.0%}) elapsed {_hms(now - self._t0)} {self._stats(now)}\n"
      )
    self.stream.flush()
    self._last_write = now
    self._written_round = self._round
