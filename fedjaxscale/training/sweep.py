"""A grid over config fields: one workdir per point, a summary table, the compare figures.

    fedjaxscale sweep --config=experiments/configs/synthetic.py --workdir=runs/lr \\
        --sweep.algorithm.client_lr=0.01,0.03,0.1 --sweep.seed=0,1,2

or from Python: ``run_sweep(config, {"algorithm.client_lr": [0.01, 0.1]}, workdir)``. A config
file may also define ``get_sweep(variant) -> {field: [values]}``; ``--sweep.FIELD`` flags
replace its fields.

The sweep's directory::

    sweep.json            the grid, the points and their overrides
    points/NAME/          one workdir per point, with every file a run writes
    data/                 generated data shared by stacked points
    summary.csv, .md      per point: its overrides, best and final accuracy, time to target, ...
    compare/              the compare figures over every point (`training.compare`)
    tensorboard/NAME/     TensorBoard hparams of each point (``tensorboard --logdir DIR``)

Points that share one system plan (synchronous, uniform selection, differing only in
`stacked.VMAPPABLE` fields: learning rates, momenta, mu and the servers' settings) run together as
one compiled program with a vmapped hyperparameter axis (`stacked_run`); the others run one after
another (`stacked.can_stack` says which configs stack). Caveat of stacking: a client whose update
is non-finite in ANY point of a group is left out of every point's aggregate. A sweep resumes like a run (``resume=True``): finished points
are kept, started ones continue from their checkpoints.
"""

from __future__ import annotations

import itertools
import json
import pathlib
import re
import shutil
from collections.abc import Sequence
from typing import Any

from fedjaxscale.training import compare, outputs, stacked
from fedjaxscale.training.setup import ConfigError, check_config

SWEEP = "sweep.json"
POINTS = "points"
SWEEP_FILES = (SWEEP, POINTS, "data", "summary.csv", "summary.md", "compare", "tensorboard")


def parse_grid(config, pairs: Sequence[tuple[str, str]]) -> dict[str, list]:
  """``[("algorithm.client_lr", "0.01,0.1"), ...]`` -> ``{field: [typed values]}``.

  Each value takes the type of the config's field (an int field refuses ``0.5``, a bool field
  takes true/false); an unknown field, a value of the wrong type or an empty list raise
  ``ConfigError`` naming the field.
  """
  grid = {}
  for field, text in pairs:
    items = [t.strip() for t in str(text).split(",")]
    if not text or any(not t for t in items):
      raise ConfigError(f"--sweep.{field}: needs a comma-separated list of values, got {text!r}")
    grid[field] = [_typed(config, field, t) for t in items]
  return check_grid(config, grid)


def check_grid(config, grid: dict[str, Sequence]) -> dict[str, list]:
  """Checks a grid given as Python values (e.g. a config file's ``get_sweep``)."""
  if not grid:
    raise ConfigError("the sweep grid is empty: give --sweep.FIELD=V1,V2,... or define get_sweep() in the config")
  out = {}
  for field, values in grid.items():
    current = _get(config, field)
    if isinstance(values, (str, bytes)) or not isinstance(values, Sequence) or not len(values):
      raise ConfigError(f"sweep.{field}: needs a non-empty list of values, got {values!r}")
    out[field] = [_coerce(field, current, v) for v in values]
    if len(set(map(repr, out[field]))) != len(out[field]):
      raise ConfigError(f"sweep.{field}: repeats a value: {out[field]}")
  return out


def points(config, grid: dict[str, list]) -> list[tuple[str, dict, Any]]:
  """``(name, overrides, config)`` per grid point (the last field varies fastest)."""
  fields = list(grid)
  out = []
  for i, values in enumerate(itertools.product(*(grid[f] for f in fields))):
    overrides = dict(zip(fields, values))
    c = config.copy_and_resolve_references()
    with c.unlocked():
      for f, v in overrides.items():
        node = c
        *path, last = f.split(".")
        for part in path:
          node = node[part]
        node[last] = v
    tag = "-".join(f"{f.split('.')[-1]}={_short(v)}" for f, v in overrides.items())
    out.append((f"{i:03d}-{re.sub(r'[^A-Za-z0-9_.=+-]', '_', tag)}", overrides, c))
  return out


def groups(pts, *, stack: bool = True) -> list[list[int]]:
  """Indices of points that run together: equal but for `stacked.VMAPPABLE` fields."""
  keyed: dict[str, list[int]] = {}
  for i, (_, _, c) in enumerate(pts):
    if stack and stacked.can_stack(c):
      key = stacked.group_key(c)
    else:
      key = f"__alone_{i}"
    keyed.setdefault(key, []).append(i)
  return list(keyed.values())


def run_sweep(
  config, grid: dict[str, Sequence], workdir, *, resume=False, overwrite=False, stack=True, show_progress=True
) -> list[dict]:
  """Runs every point of ``grid`` over ``config`` into ``workdir``; returns the table rows.

  Args:
    config: the base config.
    grid: ``field -> values``; points are the product.
    workdir: the sweep directory (layout in the module docstring).
    resume: continue a sweep that ``workdir`` holds (it must have the same grid and config).
    overwrite: replace what ``workdir`` holds.
    stack: run points that share a plan as one vmapped program (False: one at a time).
    show_progress: progress bars.

  Raises:
    ConfigError: a bad grid or a point whose config cannot run (nothing is written then); a
      workdir holding a sweep without ``resume`` or ``overwrite``, or a different sweep.
  """
  from fedjaxscale.training import loop, stacked_run  # JAX: imported when a sweep really runs

  grid = check_grid(config, grid)
  pts = points(config, grid)
  for name, _, c in pts:
    try:
      check_config(c)
    except ConfigError as e:
      raise ConfigError(f"sweep point {name}: {e}") from None
  workdir = pathlib.Path(workdir).resolve()
  if workdir.exists() and not workdir.is_dir():
    raise ConfigError(f"{workdir} is a file, not a directory")
  manifest = {
    "grid": {f: list(v) for f, v in grid.items()},
    "config": json.loads(config.to_json_best_effort()),
    "points": [{"name": n, "overrides": o} for n, o, _ in pts],
  }
  held = (workdir / SWEEP).exists() or (workdir / POINTS).exists()
  if resume and overwrite:
    raise ConfigError("--resume and --overwrite exclude each other")
  if held and not (resume or overwrite):
    raise ConfigError(f"{workdir} already holds a sweep; pass --resume to continue it or --overwrite to replace it")
  if resume:
    if not (workdir / SWEEP).exists():
      raise ConfigError(f"--resume: {workdir} holds no sweep to resume")
    old = json.loads((workdir / SWEEP).read_text())
    if json.loads(json.dumps(manifest)) != old:
      raise ConfigError(
        f"--resume: {workdir / SWEEP} holds a different grid or config; use --overwrite or a new --workdir"
      )
  if overwrite:
    for name in SWEEP_FILES:
      path = workdir / name
      shutil.rmtree(path) if path.is_dir() else path.unlink(missing_ok=True)
  (workdir / POINTS).mkdir(parents=True, exist_ok=True)
  (workdir / SWEEP).write_text(json.dumps(manifest, indent=1) + "\n")
  dirs = [workdir / POINTS / n for n, _, _ in pts]
  for group in groups(pts, stack=stack):
    done = [(dirs[i] / outputs.SUMMARY).exists() for i in group]
    if all(done):
      continue
    if len(group) == 1:
      (i,) = group
      started = (dirs[i] / "checkpoints").exists() and any((dirs[i] / "checkpoints").iterdir())
      loop.train_and_evaluate(pts[i][2], dirs[i], resume=started, overwrite=not started, show_progress=show_progress)
      continue
    started = [(dirs[i] / "checkpoints").exists() and any((dirs[i] / "checkpoints").iterdir()) for i in group]
    if not all(started):  # a fresh start for the whole group (nothing to continue from)
      for i in group:
        shutil.rmtree(dirs[i], ignore_errors=True)
    hyper = {f: [pts[i][1][f] for i in group] for f in grid if f in stacked.VMAPPABLE}
    stacked_run.run_group(
      [pts[i][2] for i in group],
      [dirs[i] for i in group],
      workdir,
      hyper,
      resume=all(started),
      show_progress=show_progress,
    )
  rows = summary_table(workdir, pts, grid)
  compare.compare(dirs, workdir / "compare")
  write_hparams(workdir, pts, rows)
  return rows


def summary_table(workdir: pathlib.Path, pts, grid) -> list[dict]:
  """Writes ``summary.csv`` and ``summary.md``: per point its overrides and its summary's numbers."""
  rows = []
  for name, overrides, _ in pts:
    summary = json.loads((workdir / POINTS / name / outputs.SUMMARY).read_text())
    rows.append({"point": name, **overrides, **{k: summary.get(k) for k in compare.TABLE_COLUMNS[3:]}})
  columns = ["point", *grid, *compare.TABLE_COLUMNS[3:]]
  lines = [",".join(columns)]
  for row in rows:
    lines.append(
      ",".join("" if row[c] is None else (repr(row[c]) if isinstance(row[c], float) else str(row[c])) for c in columns)
    )
  (workdir / "summary.csv").write_text("\n".join(lines) + "\n")
  head = ["point", *grid, "best acc", "final acc", "hours to target", "rounds to target", "wall s", "clients trained"]
  md = ["| " + " | ".join(head) + " |", "|" + " --- |" * len(head)]
  for row in rows:
    cells = [row["point"], *(str(row[f]) for f in grid)]
    for key, fmt in (
      ("best_accuracy", ".3f"),
      ("final_accuracy", ".3f"),
      ("time_to_target_hours", ".2f"),
      ("time_to_target_round", ""),
      ("wall_s", ".1f"),
      ("clients_trained", ""),
    ):
      cells.append("-" if row[key] is None else format(row[key], fmt))
    md.append("| " + " | ".join(cells) + " |")
  (workdir / "summary.md").write_text("\n".join(md) + "\n")
  return rows


def write_hparams(workdir: pathlib.Path, pts, rows) -> None:
  """TensorBoard's hparams view: one run per point with its overrides and its final numbers."""
  from tensorboardX import SummaryWriter  # pylint: disable=g-import-not-at-top

  tb = workdir / "tensorboard"
  shutil.rmtree(tb, ignore_errors=True)
  with SummaryWriter(logdir=str(tb)) as writer:
    for (name, overrides, _), row in zip(pts, rows):
      metrics = {
        f"hparam/{k}": float(row[k])
        for k in ("best_accuracy", "final_accuracy", "time_to_target_hours", "wall_s")
        if isinstance(row.get(k), (int, float))
      }
      writer.add_hparams(dict(overrides), metrics, name=name)


def _get(config, field):
  node = config
  for part in field.split("."):
    if not hasattr(node, "keys") or part not in node:
      raise ConfigError(f"sweep.{field}: is not a known config field (see fedjaxscale/training/defaults.py)")
    node = node[part]
  if hasattr(node, "keys"):
    raise ConfigError(f"sweep.{field}: is a section, not a field; sweep one of its fields")
  return node


def _typed(config, field, text: str):
  current = _get(config, field)
  if isinstance(current, bool):
    low = text.lower()
    if low not in ("true", "false", "1", "0"):
      raise ConfigError(f"--sweep.{field}: {text!r} is not a bool (true/false)")
    return low in ("true", "1")
  try:
    if isinstance(current, int):
      return int(text)
    if isinstance(current, float):
      return float(text)
  except ValueError:
    raise ConfigError(
      f"--sweep.{field}: {text!r} is not a{'n int' if isinstance(current, int) else ' float'}"
    ) from None
  if isinstance(current, str):
    return text
  raise ConfigError(f"--sweep.{field}: fields of type {type(current).__name__} cannot be swept from the command line")


def _coerce(field, current, v):
  if isinstance(current, bool):
    ok = isinstance(v, bool)
  elif isinstance(current, int):
    ok = isinstance(v, int) and not isinstance(v, bool)
  elif isinstance(current, float):
    ok = isinstance(v, (int, float)) and not isinstance(v, bool)
    v = float(v) if ok else v
  else:
    ok = isinstance(v, type(current))
  if not ok:
    raise ConfigError(f"sweep.{field}: {v!r} is not of the field's type {type(current).__name__}")
  return v


def _short(v) -> str:
  return f"{v:g}" if isinstance(v, float) else str(v)
