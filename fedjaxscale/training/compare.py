"""``fedjaxscale compare RUN_DIR... --out DIR``: one set of figures and one table over several runs.

Written into ``DIR``:

- ``accuracy_vs_round.png`` and ``accuracy_vs_hours.png``: test accuracy of every run against
  rounds and against simulated hours;
- ``train_loss_vs_round.png``: training loss of the aggregated clients;
- ``global_train_loss_vs_round.png``: the global model's loss on every client's training data
  (the FedProx paper's training loss), when the runs evaluated it (``eval_train``);
- ``round_durations.png``: the distribution of simulated round durations of each run (box plot);
- ``compare.csv`` and ``compare.md``: per run, best and final accuracy, the simulated hours and
  rounds to the target accuracy, wall time and clients trained, as in each run's
  ``summary.json`` (an unfinished run's summary is computed from its ``metrics.jsonl``).

Runs whose configs differ only in ``seed`` are one curve: the mean over the seeds at the rounds
all of them evaluated, with a band from the lowest to the highest seed (against hours, x is the
mean simulated time of those rounds). A sweep directory (``fedjaxscale sweep``) stands for its
points. NumPy and matplotlib only: no JAX.
"""

from __future__ import annotations

import argparse
import csv
import dataclasses
import io
import json
import math
import pathlib
import sys
from collections.abc import Sequence

import numpy as np

from fedjaxscale.training import outputs

TABLE_COLUMNS = (
  "run",
  "label",
  "seed",
  "best_accuracy",
  "final_accuracy",
  "target_accuracy",
  "time_to_target_hours",
  "time_to_target_round",
  "wall_s",
  "clients_trained",
  "rounds",
  "simulated_hours",
)
FIGURES = ("accuracy_vs_round.png", "accuracy_vs_hours.png", "train_loss_vs_round.png", "round_durations.png")


_BOOKKEEPING = ("rounds", "eval_every", "checkpoint_every", "target_accuracy", "eval_batch_size", "eval_train")


class CompareError(ValueError):
  """A directory that holds no run, or a run whose files cannot be read; names the path."""


@dataclasses.dataclass
class Run:
  path: pathlib.Path
  name: str
  config: dict
  records: list[dict]
  summary: dict
  label: str = ""


def find_runs(paths: Sequence) -> list[pathlib.Path]:
  """The run directories among ``paths``; a sweep directory stands for its points, in order."""
  found = []
  for p in map(pathlib.Path, paths):
    if not p.is_dir():
      raise CompareError(f"{p} is not a directory")
    if (p / outputs.METRICS).is_file():
      found.append(p)
    elif (p / "sweep.json").is_file() and (p / "points").is_dir():
      points = [q for q in sorted((p / "points").iterdir()) if (q / outputs.METRICS).is_file()]
      if not points:
        raise CompareError(f"{p} is a sweep none of whose points has started")
      found.extend(points)
    else:
      raise CompareError(f"{p} holds no run (no {outputs.METRICS})")
  if not found:
    raise CompareError("no run directory given")
  return found


def load_run(path) -> Run:
  path = pathlib.Path(path)
  try:
    records = outputs.read_metrics(path)
    config = json.loads((path / outputs.CONFIG).read_text()) if (path / outputs.CONFIG).is_file() else {}
    if (path / outputs.SUMMARY).is_file():
      summary = json.loads((path / outputs.SUMMARY).read_text())
    else:
      target = (config.get("target_accuracy") or None) if isinstance(config, dict) else None
      summary = outputs.summarize(records, target_accuracy=target)
  except FileNotFoundError as e:
    raise CompareError(f"{path} holds no run: {e}") from None
  except ValueError as e:  # malformed lines name their file
    raise CompareError(str(e)) from None
  if not records:
    raise CompareError(f"{path / outputs.METRICS} holds no round yet")
  return Run(path, path.name, config if isinstance(config, dict) else {}, records, summary)


def _flat(d: dict, prefix="") -> dict:
  out = {}
  for k, v in d.items():
    if isinstance(v, dict):
      out.update(_flat(v, f"{prefix}{k}."))
    else:
      out[prefix + k] = json.dumps(v, sort_keys=True)
  return out


def group_by_seed(runs: list[Run]) -> list[list[Run]]:
  """Runs whose configs are equal but for ``seed``, in first-seen order; labels every run."""
  groups: dict[str, list[Run]] = {}
  for run in runs:
    flat = _flat(run.config)
    flat.pop("seed", None)
    key = json.dumps(flat, sort_keys=True) if run.config else f"__{run.path}"
    groups.setdefault(key, []).append(run)
  out = list(groups.values())
  flats = [_flat(g[0].config) for g in out]
  for f in flats:
    f.pop("seed", None)
  keys = sorted({k for f in flats for k in f})
  differing = [k for k in keys if len({f.get(k) for f in flats}) > 1 and k != "data.path"]
  # What a reader compares first: the algorithm and system settings, then the run's bookkeeping.
  differing.sort(key=lambda k: (k in _BOOKKEEPING, not k.startswith(("algorithm.", "system.mode")), k))
  for group, flat in zip(out, flats):
    label = ", ".join(f"{k.split('.')[-1]}={json.loads(flat[k]) if k in flat else '-'}" for k in differing[:4])
    for run in group:
      run.label = label or (group[0].name if len(group) == 1 else group[0].path.parent.name)
  return out


def compare(paths: Sequence, out_dir, *, target_accuracy: float | None = None) -> dict:
  """Writes the figures and table of the runs in ``paths`` into ``out_dir``.

  Args:
    paths: run directories (or sweep directories).
    out_dir: where to write (created).
    target_accuracy: draw this line on the accuracy figures (default: the runs' own target).

  Returns:
    ``{"figures": [paths], "table": [rows as dicts], "csv": path, "md": path}``.

  Raises:
    CompareError: a directory that holds no run, or a malformed run file (nothing is written).
  """
  runs = [load_run(p) for p in find_runs(paths)]
  groups = group_by_seed(runs)
  out_dir = pathlib.Path(out_dir)
  out_dir.mkdir(parents=True, exist_ok=True)
  rows = [table_row(r) for r in runs]
  csv_path, md_path = out_dir / "compare.csv", out_dir / "compare.md"
  csv_path.write_text(to_csv(rows))
  md_path.write_text(to_markdown(rows, groups))
  if target_accuracy is None:
    targets = {r.summary.get("target_accuracy") for r in runs} - {None, 0}
    target_accuracy = targets.pop() if len(targets) == 1 else None
  figures = _figures(groups, out_dir, target_accuracy)
  return {"figures": figures, "table": rows, "csv": csv_path, "md": md_path}


def table_row(run: Run) -> dict:
  s = run.summary
  row = {"run": str(run.path), "label": run.label, "seed": run.config.get("seed")}
  for key in TABLE_COLUMNS[3:]:
    row[key] = s.get(key)
  return row


def to_csv(rows: list[dict]) -> str:
  buf = io.StringIO()
  writer = csv.DictWriter(buf, fieldnames=TABLE_COLUMNS, lineterminator="\n")
  writer.writeheader()
  for row in rows:
    writer.writerow({k: "" if row.get(k) is None else _exact(row[k]) for k in TABLE_COLUMNS})
  return buf.getvalue()


def read_csv(path) -> list[dict]:
  """``compare.csv`` back as dicts of floats/ints (empty cells: None)."""
  rows = []
  with open(path, newline="") as f:
    for row in csv.DictReader(f):
      rows.append({k: _parse(k, v) for k, v in row.items()})
  return rows


def to_markdown(rows: list[dict], groups: list[list[Run]]) -> str:
  head = ["run", "seed", "best acc", "final acc", "hours to target", "rounds to target", "wall s", "clients trained"]
  lines = ["| " + " | ".join(head) + " |", "|" + " --- |" * len(head)]
  for row in rows:
    name = row["label"] if row["label"] else pathlib.Path(row["run"]).name
    if row["label"] and row["label"] != pathlib.Path(row["run"]).name:
      name = f"{row['label']} ({pathlib.Path(row['run']).name})"
    lines.append(
      "| "
      + " | ".join(
        [
          name,
          _md(row["seed"]),
          _md(row["best_accuracy"], ".3f"),
          _md(row["final_accuracy"], ".3f"),
          _md(row["time_to_target_hours"], ".2f"),
          _md(row["time_to_target_round"]),
          _md(row["wall_s"], ".1f"),
          _md(row["clients_trained"]),
        ]
      )
      + " |"
    )
  multi = [g for g in groups if len(g) > 1]
  if multi:
    lines += ["", "Mean (min-max) over seeds:", "", "| runs | seeds | best acc | final acc | hours to target |"]
    lines.append("| --- | --- | --- | --- | --- |")
    for g in multi:
      cells = [g[0].label, str(len(g))]
      for key in ("best_accuracy", "final_accuracy", "time_to_target_hours"):
        v = [r.summary.get(key) for r in g]
        v = [x for x in v if isinstance(x, (int, float))]
        cells.append(
          f"{np.mean(v):.3f} ({min(v):.3f}-{max(v):.3f})" + ("" if len(v) == len(g) else f", {len(v)} of {len(g)}")
          if v
          else "n/a"
        )
      lines.append("| " + " | ".join(cells) + " |")
  target = {r.get("target_accuracy") for r in rows} - {None}
  if len(target) == 1:
    lines += ["", f"Target accuracy {target.pop():g}; hours are simulated."]
  return "\n".join(lines) + "\n"


def _exact(v):
  return repr(v) if isinstance(v, float) else v


def _parse(key, v):
  if v == "":
    return None
  if key in ("run", "label"):
    return v
  try:
    return int(v)
  except ValueError:
    try:
      return float(v)
    except ValueError:
      return v


def _md(v, fmt=""):
  if v is None or (isinstance(v, float) and not math.isfinite(v)):
    return "-"
  return format(v, fmt) if fmt and isinstance(v, (int, float)) else str(v)


# -- figures ------------------------------------------------------------------------------------


def _curves(group: list[Run], key):
  """Rounds that every run of the group has ``key`` on, with the per-run values and clocks."""
  per_run = []
  for run in group:
    pts = {}
    for r in run.records:
      v = key(r)
      if isinstance(v, (int, float)) and math.isfinite(v):
        pts[r["round"]] = (v, r.get("clock_s", 0.0))
    per_run.append(pts)
  common = sorted(set.intersection(*(set(p) for p in per_run))) if per_run else []
  values = np.array([[p[k][0] for k in common] for p in per_run]).reshape(len(per_run), len(common))
  clocks = np.array([[p[k][1] for k in common] for p in per_run]).reshape(len(per_run), len(common))
  return np.array(common), values, clocks


def _figures(groups, out_dir: pathlib.Path, target):
  from matplotlib.figure import Figure  # pylint: disable=g-import-not-at-top

  written = []
  acc = lambda r: (r.get("eval") or {}).get("accuracy")
  loss = lambda r: r.get("train_loss")
  global_loss = lambda r: (r.get("eval_train") or {}).get("loss")
  for name, key, x_axis, ylabel, title in (
    ("accuracy_vs_round.png", acc, "round", "test accuracy", "Test accuracy vs round"),
    ("accuracy_vs_hours.png", acc, "hours", "test accuracy", "Test accuracy vs simulated time"),
    ("train_loss_vs_round.png", loss, "round", "training loss", "Training loss of the aggregated clients"),
    # Only runs with eval_train: no file otherwise.
    ("global_train_loss_vs_round.png", global_loss, "round", "global training loss", "Global model's training loss"),
  ):
    fig = Figure(figsize=(8, 4.5), dpi=110, layout="constrained")
    ax = fig.add_subplot()
    drawn = False
    for i, group in enumerate(groups):
      rounds, values, clocks = _curves(group, key)
      if not rounds.size:
        continue
      x = rounds if x_axis == "round" else clocks.mean(0) / 3600
      label = group[0].label + (f" (mean of {len(group)} seeds)" if len(group) > 1 else "")
      ax.plot(x, values.mean(0), color=f"C{i % 10}", marker="." if len(x) < 40 else None, label=label)
      if len(group) > 1:
        ax.fill_between(x, values.min(0), values.max(0), color=f"C{i % 10}", alpha=0.2, lw=0)
      drawn = True
    if not drawn:
      continue
    if target and key is acc:
      ax.axhline(target, color="0.4", ls=":", lw=1, label=f"target {target:g}")
    ax.set(xlabel="round" if x_axis == "round" else "simulated time (hours)", ylabel=ylabel, title=title)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, loc="best")
    fig.savefig(out_dir / name)
    written.append(out_dir / name)
  durations = [
    [
      r["round_duration_s"] / 60
      for run in g
      for r in run.records
      if isinstance(r.get("round_duration_s"), (int, float))
    ]
    for g in groups
  ]
  if any(durations):
    fig = Figure(figsize=(8, 0.9 + 0.45 * len(groups)), dpi=110, layout="constrained")
    ax = fig.add_subplot()
    ax.boxplot([d or [0.0] for d in durations], orientation="horizontal", showfliers=True)
    ax.set_yticks(range(1, len(groups) + 1), [g[0].label for g in groups])
    ax.set(xlabel="simulated round duration (minutes)", title="Round durations (every round of every seed)")
    ax.tick_params(axis="y", labelsize=7)
    ax.grid(alpha=0.3, axis="x")
    fig.savefig(out_dir / "round_durations.png")
    written.append(out_dir / "round_durations.png")
  return written


def main(argv: Sequence[str] | None = None) -> int:
  """``fedjaxscale compare RUN_DIR... --out DIR``; returns 2 with one message on a bad directory."""
  parser = argparse.ArgumentParser(
    prog="fedjaxscale compare",
    description="One set of figures (accuracy vs rounds and simulated hours, training loss, round durations) "
    "and a Markdown/CSV table over several runs; runs that differ only in seed are shown as a mean with a band.",
  )
  parser.add_argument("runs", nargs="+", metavar="RUN_DIR", help="run directories (a sweep directory: its points)")
  parser.add_argument("--out", required=True, metavar="DIR", help="where the figures and compare.csv/.md go")
  parser.add_argument("--target", type=float, default=None, help="target accuracy line (default: the runs' own)")
  args = parser.parse_args(argv)
  try:
    result = compare(args.runs, args.out, target_accuracy=args.target)
  except CompareError as e:
    print(f"fedjaxscale compare: error: {e}", file=sys.stderr)
    return 2
  print(pathlib.Path(result["md"]).read_text(), end="")
  print(f"figures and table: {args.out}/")
  return 0


if __name__ == "__main__":
  sys.exit(main(sys.argv[1:]))
