"""Several rounds in one compiled program against one round a call (``Algorithm.apply_rounds``).

A benchmark, not a test. Logistic regression as in ``benchmarks/peers.py`` (1,000 clients x 50
examples, 20 features, 2 classes, one local epoch of batch 10; the features resident on the
device, cohorts gathered by index), a new cohort drawn every round with ``gather_cohort``, at
cohorts of 10 to 1,000 clients. Three contenders take turns, spell by spell (a burst of load then
hits each alike):

- ``apply``: ``gather_cohort`` + ``fedavg(...).apply``, one round a call;
- ``apply_rounds``: ``R`` cohorts gathered, then one ``apply_rounds`` call runs them as one
  ``lax.scan`` over rounds with the server update inside;
- hand-written: one ``jit(vmap(scan))`` a round with the data on the device, gathered by index
  (no host work at all: the bound this math has).

Milliseconds a round: the best spell and the median spell.

Usage::

  .venv/bin/python benchmarks/rounds.py [--quick] [--out benchmarks/results/rounds.md]
"""

import argparse
import datetime
import os
import pathlib
import platform
import subprocess
import sys
import tempfile
import time

import jax
import numpy as np
import optax

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent))
import peers

from fedjaxscale import algorithms


def measure(cohorts, block, spells, rounds, tmp):
  train, model, hand = peers.logreg_setup(tmp)

  rows = []
  for k in cohorts:
    alg = algorithms.fedavg(model, optax.sgd(0.1))
    contenders = peers.logreg_spells(alg, train, model, hand, k, block)
    for run in contenders.values():  # warm-up: compiles
      run(2 * block)
    ms = {name: [] for name in contenders}
    for _ in range(spells):
      for name, run in contenders.items():
        tic = time.perf_counter()
        run(rounds)
        ms[name].append((time.perf_counter() - tic) / rounds * 1e3)
    rows.append({"k": k, **{n: (min(v), float(np.median(v))) for n, v in ms.items()}})
    print(
      f"cohort {k}: " + ", ".join(f"{n} {b:.3f} ({m:.3f}) ms" for n, (b, m) in list(rows[-1].items())[1:]), flush=True
    )
  return rows


def report(rows, block, spells, rounds) -> str:
  commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True).stdout.strip()
  lines = [
    "# Several rounds in one program (`benchmarks/rounds.py`)",
    "",
    f"- date: {datetime.datetime.now().isoformat(timespec='seconds')}; commit {commit}",
    f"- {platform.processor() or platform.machine()}, {os.cpu_count()} cores; jax {jax.__version__} "
    f"({jax.default_backend()}), {jax.device_count()} device(s); load average at the end {os.getloadavg()}",
    f"- logistic regression, 1,000 clients x 50 examples, one epoch of batch 10; a new cohort every round; "
    f"{spells} spells of {rounds} rounds each, the contenders taking turns; `apply_rounds` runs {block} rounds a call",
    "",
    "Milliseconds a round, best spell (median spell):",
    "",
    "| cohort | `apply`, a round a call | `apply_rounds`, one program | **speed-up** | hand-written, data on device "
    "| `apply` / hand | `apply_rounds` / hand |",
    "| ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
  ]
  for r in rows:
    (ab, am), (rb, rm), (hb, hm) = r["apply"], r["apply_rounds"], r["hand"]
    lines.append(
      f"| {r['k']:,} | {ab:.3f} ({am:.3f}) | {rb:.3f} ({rm:.3f}) | **{ab / rb:.2f}x** ({am / rm:.2f}x) | "
      f"{hb:.3f} ({hm:.3f}) | {hb / ab:.2f} ({hm / am:.2f}) | {hb / rb:.2f} ({hm / rm:.2f}) |"
    )
  return "\n".join(lines) + "\n"


def main():
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--quick", action="store_true", help="fewer, smaller cohorts and spells")
  parser.add_argument("--block", type=int, default=10, help="rounds a call of apply_rounds")
  parser.add_argument("--out", default=str(pathlib.Path(__file__).resolve().parent / "results" / "rounds.md"))
  args = parser.parse_args()
  cohorts, spells, rounds = ([10, 100], 2, 20) if args.quick else ([10, 20, 100, 1000], 5, 50)
  with tempfile.TemporaryDirectory() as tmp:
    rows = measure(cohorts, args.block, spells, rounds, pathlib.Path(tmp))
  text = report(rows, args.block, spells, rounds)
  pathlib.Path(args.out).write_text(text)
  print(text)


if __name__ == "__main__":
  main()
