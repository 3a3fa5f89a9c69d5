"""Progress reporting: a redrawn bar on a terminal, throttled log lines elsewhere."""

import io

from fedjaxscale.training.progress import Progress


class FakeClock:
  def __init__(self):
    self.t = 0.0

  def __call__(self):
    return self.t


def test_tty_bar_redraws_one_line():
  stream, clock = io.StringIO(), FakeClock()
  p = Progress(100, stream=stream, is_tty=True, clock=clock)
  for r in range(1, 13):
    clock.t += 1.0
    p.update(r, loss=0.81 + r, accuracy=0.713 if r == 4 else None, clock_s=3.2 * 3600)
  out = stream.getvalue()
  assert "\n" not in out and out.count("\r") == 12
  last = out.rsplit("\r", 1)[-1]
  # 12 rounds in 12 s: 88 left take 88 s. The accuracy of round 4 is kept.
  assert last == "[" + "#" * 3 + "." * 27 + "] 12/100 ETA 0:01:28 acc 0.713 loss 12.8 sim 3.2h"
  p.close()
  assert stream.getvalue().endswith("\n")


def test_tty_redraws_are_throttled_but_the_last_round_is_drawn():
  stream, clock = io.StringIO(), FakeClock()
  p = Progress(50, stream=stream, is_tty=True, clock=clock)
  for r in range(1, 51):
    clock.t += 0.001
    p.update(r)
  assert stream.getvalue().count("\r") == 2  # the first round, then the last
  assert stream.getvalue().rsplit("\r", 1)[-1].startswith("[" + "#" * 30 + "] 50/50 ETA 0:00:00")


def test_shorter_redraw_pads_over_the_previous_line():
  stream = io.StringIO()
  p = Progress(10, stream=stream, is_tty=True, clock=FakeClock())
  p.update(1, accuracy=0.5, loss=1.0, clock_s=7200)
  p._last_write = None  # force the next redraw
  p.update(2)
  first, second = stream.getvalue().split("\r")[1:]
  assert len(second) == len(first)


def test_log_lines_when_not_a_tty():
  stream, clock = io.StringIO(), FakeClock()
  p = Progress(30, stream=stream, is_tty=False, log_every_s=10.0, clock=clock)
  for r in range(1, 31):
    clock.t += 1.0
    p.update(r, loss=0.5, accuracy=0.25 if r >= 20 else None, clock_s=r * 360.0)
  p.close()
  lines = stream.getvalue().splitlines()
  assert [line.split()[1] for line in lines] == ["1/30", "11/30", "21/30", "30/30"]
  assert lines[0] == "round 1/30 (3%) elapsed 0:00:01 ETA 0:00:29 loss 0.5 sim 0.1h"
  assert lines[-1] == "round 30/30 (100%) elapsed 0:00:30 ETA 0:00:00 acc 0.250 loss 0.5 sim 3.0h"
  assert "\r" not in stream.getvalue()


def test_close_logs_an_unreported_last_update_of_a_stopped_run():
  stream, clock = io.StringIO(), FakeClock()
  p = Progress(100, stream=stream, is_tty=False, clock=clock)
  for r in (1, 2, 3):
    clock.t += 1.0
    p.update(r)
  p.close()
  assert [line.split()[1] for line in stream.getvalue().splitlines()] == ["1/100", "3/100"]


def test_resumed_run_eta_counts_only_rounds_run_since():
  stream, clock = io.StringIO(), FakeClock()
  p = Progress(100, stream=stream, is_tty=False, start_round=50, clock=clock)
  clock.t = 10.0
  p.update(60)  # 10 rounds in 10 s: 40 left
  assert "ETA 0:00:40" in stream.getvalue() and "60/100 (60%)" in stream.getvalue()


def test_disabled_and_default_stream(capsys):
  p = Progress(3, enabled=False)
  p.update(3, accuracy=1.0)
  p.close()
  p = Progress(2)  # stderr, which pytest's capture is not a terminal
  assert not p.is_tty
  p.update(2)
  assert capsys.readouterr().err.startswith("round 2/2 (100%)")
