"""PNG plots of a run, made from its workdir (``python -m fedjaxscale.training.plots WORKDIR``).

Written into ``WORKDIR/plots/``:

- ``accuracy_vs_round.png``: test accuracy per evaluated round, with the 10th-90th percentile
  band and median of the per-client accuracy when recorded.
- ``accuracy_vs_hours.png``: the same against simulated hours (time to accuracy).
- ``train_loss_vs_round.png``: training loss of the aggregated clients per round.
- ``round_duration_hist.png``: the distribution of simulated round durations.
- ``gantt.png``: a timeline of sample clients over a few rounds (FedScale, Lai et al., "FedScale:
  Benchmarking Model and System Performance of Federated Learning at Scale", ICML 2022,
  arXiv:2105.11367, Figure 12): one bar per client, split into download, compute and upload;
  stragglers faded, dropped clients cut at the time they went offline.
- ``online_clients.png``: clients online over the trace period (``availability.csv``).

A plot whose data is absent (no evaluated round yet, no timeline) is skipped and logged. Plots
use matplotlib's object API with the Agg canvas, so they never touch pyplot's global backend (a
notebook keeps its own).
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import pathlib
import subprocess
import sys
from collections.abc import Sequence

import numpy as np

from fedjaxscale.training import outputs

_log = logging.getLogger(__name__)

_PHASES = (("download", "start", "#4C72B0"), ("compute", "download", "#DD8452"), ("upload", "compute", "#55A868"))
_FADED = {"straggler": 0.35, "dropped": 0.35, "discarded": 0.35}


class _Skip(Exception):
  """A plot's data is absent."""


class Drawer:
  """Draws a run's plots in a child process started before the run trains.

  Importing matplotlib (about 0.6 s) and drawing the six plots (about 0.5 s) were a quarter of a
  warm ``make demo`` on the project's 2-core machine; the child imports while the run trains, on
  the other core, and draws once `draw` hands it the finished workdir. Where the child cannot
  start or fails, `draw` draws in this process instead, so the plots are there either way.
  """

  def __init__(self):
    try:
      self._child = subprocess.Popen(
        [sys.executable, "-m", "fedjaxscale.training.plots", "--wait"],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
      )
    except OSError as e:
      _log.info("drawing the plots in this process: %s", e)
      self._child = None

  def draw(self, workdir) -> list[pathlib.Path]:
    """Draws ``workdir``'s plots (as `make_plots`) and returns their paths."""
    child, self._child = self._child, None
    if child is not None:
      try:
        out, err = child.communicate(f"{pathlib.Path(workdir).resolve()}\n", timeout=600)
      except subprocess.TimeoutExpired:
        child.kill()
        out, err = child.communicate()
      if child.returncode == 0:
        for line in err.splitlines():
          _log.info("%s", line)
        return [pathlib.Path(line) for line in out.splitlines()]
      _log.warning("the plot process failed (exit %s), drawing here: %s", child.returncode, err.strip()[-2000:])
    return make_plots(workdir)

  def close(self) -> None:
    """Stops a child that was never asked to draw (a failed run)."""
    if self._child is not None:
      self._child.kill()
      self._child.wait()
      self._child = None


def make_plots(
  workdir,
  *,
  out_dir=None,
  max_gantt_clients: int = 60,
  gantt_rounds: int | Sequence[int] = 3,
  only: Sequence[str] | None = None,
) -> list[pathlib.Path]:
  """Writes the run's PNG plots and returns their paths.

  Args:
    workdir: a run directory (must hold ``metrics.jsonl``).
    out_dir: where to write (default ``workdir/plots``).
    max_gantt_clients: bars in the Gantt chart, shared between its rounds.
    gantt_rounds: the number of first rounds, or the rounds, the Gantt chart shows.
    only: file names of the plots to make (default: all).

  Returns:
    The written paths; skipped plots are logged.

  Raises:
    FileNotFoundError: ``workdir/metrics.jsonl`` is missing.
    ValueError: a malformed line in one of the run's files.
  """
  written, _ = _make_plots(workdir, out_dir, max_gantt_clients, gantt_rounds, only)
  return written


def _make_plots(workdir, out_dir, max_gantt_clients, gantt_rounds, only=None):
  workdir = pathlib.Path(workdir)
  records = outputs.read_metrics(workdir)
  out_dir = pathlib.Path(out_dir) if out_dir is not None else workdir / outputs.PLOTS
  out_dir.mkdir(parents=True, exist_ok=True)
  target = None
  if (workdir / outputs.SUMMARY).is_file():
    target = json.loads((workdir / outputs.SUMMARY).read_text()).get("target_accuracy")
  jobs = {
    "accuracy_vs_round.png": lambda fig: _accuracy(fig, records, "round", target),
    "accuracy_vs_hours.png": lambda fig: _accuracy(fig, records, "hours", target),
    "train_loss_vs_round.png": lambda fig: _train_loss(fig, records),
    "round_duration_hist.png": lambda fig: _round_durations(fig, records),
    "gantt.png": lambda fig: _gantt(fig, workdir, records, max_gantt_clients, gantt_rounds),
    "online_clients.png": lambda fig: _online(fig, workdir),
  }
  unknown = set(only or ()) - set(jobs)
  if unknown:
    raise ValueError(f"unknown plots {sorted(unknown)}; known: {sorted(jobs)}")
  from matplotlib.figure import Figure  # pylint: disable=g-import-not-at-top

  written, skipped = [], []
  for name, draw in jobs.items():
    if only is not None and name not in only:
      continue
    # matplotlib's default margins fit these single-axes plots; a layout engine drew every
    # figure twice (a third of the demo's wall time once its programs are cached).
    fig = Figure(figsize=(8, 4.5), dpi=110)
    try:
      draw(fig)
    except _Skip as e:
      _log.info("skipped %s: %s", name, e)
      skipped.append((name, str(e)))
      continue
    path = out_dir / name
    fig.savefig(path, pil_kwargs={"compress_level": 1})  # zlib's fastest: a third of savefig's time at 6
    written.append(path)
  return written, skipped


def _evals(records):
  return [r for r in records if isinstance(r.get("eval"), dict) and r["eval"].get("accuracy") is not None]


def _accuracy(fig, records, x_axis, target):
  evals = _evals(records)
  if not evals:
    raise _Skip("no evaluated round in metrics.jsonl yet")
  if x_axis == "round":
    x, label = np.array([r["round"] for r in evals]), "round"
  else:
    x, label = np.array([r["clock_s"] for r in evals]) / 3600, "simulated time (hours)"
  ax = fig.add_subplot()
  acc = [r["eval"]["accuracy"] for r in evals]
  pcts = [[r["eval"].get(f"client_accuracy_p{p}") for r in evals] for p in (10, 50, 90)]
  if all(v is not None for v in pcts[0] + pcts[2]):
    ax.fill_between(x, pcts[0], pcts[2], color="C0", alpha=0.15, lw=0, label="per-client accuracy, p10-p90")
  if all(v is not None for v in pcts[1]):
    ax.plot(x, pcts[1], color="C0", ls="--", lw=1, label="per-client accuracy, median")
  ax.plot(x, acc, color="C0", marker="." if len(x) < 60 else None, label="test accuracy")
  personal = [r.get("eval_personal") or {} for r in evals]
  if all(p.get("accuracy") is not None for p in personal):  # eval_personal: each client's own model
    lo, hi = [p.get("client_accuracy_p10") for p in personal], [p.get("client_accuracy_p90") for p in personal]
    if all(v is not None for v in lo + hi):
      ax.fill_between(x, lo, hi, color="C2", alpha=0.15, lw=0, label="personalized, per-client p10-p90")
    ax.plot(x, [p["accuracy"] for p in personal], color="C2", marker="." if len(x) < 60 else None, label="personalized")
  if target is not None:
    ax.axhline(target, color="0.4", ls=":", lw=1, label=f"target {target:g}")
  ax.set(
    xlabel=label, ylabel="accuracy", title=f"Test accuracy vs {'round' if x_axis == 'round' else 'simulated time'}"
  )
  ax.grid(alpha=0.3)
  ax.legend(loc="lower right", fontsize=8)


def _train_loss(fig, records):
  pts = [
    (r["round"], r["train_loss"])
    for r in records
    if isinstance(r.get("train_loss"), (int, float)) and math.isfinite(r["train_loss"])
  ]
  if not pts:
    raise _Skip("no training loss in metrics.jsonl")
  ax = fig.add_subplot()
  ax.plot(*zip(*pts), color="C1")
  ax.set(xlabel="round", ylabel="training loss", title="Training loss of the aggregated clients")
  ax.grid(alpha=0.3)


def _time_unit(span_s: float) -> tuple[float, str]:
  if span_s < 600:
    return 1.0, "s"
  if span_s < 6 * 3600:
    return 60.0, "min"
  return 3600.0, "h"


def _round_durations(fig, records):
  d = np.array([r["round_duration_s"] for r in records if r.get("round_duration_s") is not None], float)
  d = d[np.isfinite(d)]
  if not d.size:
    raise _Skip("no round durations in metrics.jsonl")
  scale, unit = _time_unit(float(np.median(d)) * 10)
  d = d / scale
  ax = fig.add_subplot()
  # Equal durations (to rounding) leave no room for several bins: numpy's histogram refuses them.
  spread = float(np.ptp(d)) > 1e-9 * max(1.0, float(np.abs(d).max()))
  ax.hist(d, bins=min(50, max(5, d.size // 4)) if spread else 1, color="C2", alpha=0.8)
  for q, ls in ((50, "-"), (90, "--")):
    v = np.percentile(d, q)
    ax.axvline(v, color="k", ls=ls, lw=1, label=f"p{q} {v:.3g} {unit}")
  ax.set(
    xlabel=f"simulated round duration ({unit})",
    ylabel="rounds",
    title=f"Round durations ({d.size} rounds, total {d.sum() * scale / 3600:.3g} simulated hours)",
  )
  ax.legend(fontsize=8)


def _gantt_rows(tl, rounds, max_clients):
  """Indices of the timeline rows to draw: per round, spread evenly over finish order."""
  per_round = max(1, max_clients // len(rounds))
  rows = []
  for r in rounds:
    idx = np.flatnonzero(tl["round"] == r)
    idx = idx[np.argsort(tl["finish"][idx], kind="stable")]
    if idx.size > per_round:
      idx = idx[np.unique(np.linspace(0, idx.size - 1, per_round).round().astype(int))]
    rows.append(idx)
  return rows


def _gantt(fig, workdir, records, max_clients, gantt_rounds):
  if not (workdir / outputs.TIMELINE).is_file():
    raise _Skip("no timeline.csv")
  tl = outputs.read_timeline(workdir)
  present = np.unique(tl["round"])
  if not present.size:
    raise _Skip("timeline.csv has no rows yet")
  if isinstance(gantt_rounds, int):
    rounds = present[:gantt_rounds].tolist()
  else:
    rounds = [r for r in gantt_rounds if r in set(present.tolist())]
    if not rounds:
      raise _Skip(f"none of rounds {list(gantt_rounds)} is in timeline.csv")
  groups = _gantt_rows(tl, rounds, max_clients)
  sel = np.concatenate(groups)
  times = np.concatenate([tl[c][sel] for c in ("start", "download", "compute", "upload", "finish")])
  times = times[np.isfinite(times)]
  t0 = float(times.min())
  scale, unit = _time_unit(float(times.max()) - t0)
  ax = fig.add_subplot()
  y, ticks, labels = 0, [], []
  bars, marks = {}, {}  # (phase, alpha) -> [(y, width, left)]; status -> [(x, y)]: one call each
  for r, idx in zip(rounds, groups):
    top = y
    for i in idx:
      status, finish = tl["status"][i], tl["finish"][i]
      alpha = _FADED.get(status, 1.0)
      for phase, begin_col, _ in _PHASES:
        a, b = tl[begin_col][i], tl[phase][i]
        if status == "dropped":
          b = min(b, finish)
        if not (np.isfinite(a) and np.isfinite(b)) or b <= a:
          continue
        bars.setdefault((phase, alpha), []).append((y, (b - a) / scale, (a - t0) / scale))
      if status in ("dropped", "straggler", "discarded") and np.isfinite(finish):
        marks.setdefault(status, []).append(((finish - t0) / scale, y))
      y += 1
    ticks.append((top + y - 1) / 2)
    labels.append(f"round {r}")
    ax.axhline(y - 0.5, color="0.85", lw=0.8)
  drawn = set()
  for phase, _, color in _PHASES:
    for (name, alpha), rows in bars.items():
      if name == phase:
        ys, widths, lefts = zip(*rows)
        label = phase if phase not in drawn else None
        drawn.add(phase)
        ax.barh(ys, widths, left=lefts, height=0.8, color=color, alpha=alpha, label=label, lw=0)
  for status, points in marks.items():
    marker, color = {"dropped": ("x", "C3"), "straggler": ("|", "k"), "discarded": ("|", "C3")}[status]
    xs, ys = zip(*points)
    ax.plot(xs, ys, marker=marker, color=color, ms=7, mew=1.5, ls="none", label=status)
  ends = [rec["clock_s"] for rec in records if rec["round"] in set(rounds) and rec.get("clock_s") is not None]
  for i, e in enumerate(ends):
    ax.axvline((e - t0) / scale, color="0.3", ls="--", lw=0.8, label="round end" if i == 0 else None)
  ax.set_yticks(ticks, labels, fontsize=8)
  ax.set_ylim(y - 0.5, -0.5)  # first round on top
  ax.set(
    xlabel=f"simulated time ({unit}) since the first round shown",
    title=f"Sample clients per round ({sel.size} of {int(np.isin(tl['round'], rounds).sum())}), by finish time",
  )
  handles, names = ax.get_legend_handles_labels()
  order = ["download", "compute", "upload", "straggler", "dropped", "discarded", "round end"]
  pairs = sorted(zip(names, handles), key=lambda nh: order.index(nh[0]))
  ax.legend(
    [h for _, h in pairs],
    [n for n, _ in pairs],
    loc="upper center",
    bbox_to_anchor=(0.5, -0.13),
    ncol=len(pairs),
    fontsize=8,
    frameon=False,
  )
  fig.subplots_adjust(bottom=0.2)  # room for the legend below the axis label (no layout engine)


def _online(fig, workdir):
  if not (workdir / outputs.AVAILABILITY).is_file():
    raise _Skip("no availability.csv")
  hours, online = outputs.read_availability(workdir)
  if not hours.size:
    raise _Skip("availability.csv has no rows")
  ax = fig.add_subplot()
  ax.plot(hours, online, color="C4", lw=1)
  ax.fill_between(hours, online, color="C4", alpha=0.15, lw=0)
  if hours.max() - hours.min() >= 48:
    ax.set_xticks(np.arange(math.floor(hours.min() / 24) * 24, hours.max() + 1, 24))
  ax.set(xlabel="simulated time (hours)", ylabel="clients online", title="Online clients over the trace period")
  ax.set_ylim(bottom=0)
  ax.grid(alpha=0.3)


def main(argv: Sequence[str] | None = None) -> int:
  """``python -m fedjaxscale.training.plots WORKDIR [--out_dir DIR]``; ``argv`` excludes the
  program name. Prints the written paths; returns 2 (with a message) on a bad workdir."""
  parser = argparse.ArgumentParser(prog="python -m fedjaxscale.training.plots", description=__doc__.split("\n")[0])
  parser.add_argument("workdir", nargs="?" if "--wait" in (argv or sys.argv[1:]) else None)
  parser.add_argument("--out_dir", default=None, help="default: WORKDIR/plots")
  parser.add_argument("--max_gantt_clients", type=int, default=60)
  parser.add_argument("--wait", action="store_true", help=argparse.SUPPRESS)  # `Drawer`'s child
  args = parser.parse_args(argv)
  if args.wait:  # import matplotlib now, then draw the workdir that arrives on stdin
    from matplotlib import figure  # noqa: F401  pylint: disable=g-import-not-at-top,unused-import
    from matplotlib.backends import backend_agg  # noqa: F401  pylint: disable=g-import-not-at-top,unused-import

    args.workdir = sys.stdin.readline().strip()
    if not args.workdir:  # the run ended without plots
      return 0
  try:
    written, skipped = _make_plots(args.workdir, args.out_dir, args.max_gantt_clients, 3)
  except (FileNotFoundError, ValueError) as e:
    print(f"error: {e}", file=sys.stderr)
    return 2
  for path in written:
    print(path)
  for name, why in skipped:
    print(f"skipped {name}: {why}", file=sys.stderr)
  return 0


if __name__ == "__main__":
  from fedjaxscale.main import fast_exit  # pylint: disable=g-import-not-at-top

  fast_exit(main(sys.argv[1:]))
