"""Sweep benchmark: a learning-rate sweep of the demo, stacked (one vmapped program) vs one point at a time.

Usage (from the repository root):

  python benchmarks/sweep.py                       # 9 client learning rates, 50 rounds (the demo)
  python benchmarks/sweep.py --rounds 10           # shorter, for a loaded machine

Both arms run `fedjaxscale.training.sweep.run_sweep` on `experiments/configs/synthetic.py` over
the same 9 client learning rates, from a cold process each (compiles included), and print a
Markdown row with the machine's load beside the figures (`uptime`): this machine is shared.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import pathlib
import platform
import subprocess
import sys
import tempfile
import time

ROOT = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

LRS = (0.01, 0.02, 0.03, 0.05, 0.07, 0.1, 0.15, 0.2, 0.3)


def _one(stack: bool, rounds: int, workdir: str) -> None:
  from fedjaxscale.training.sweep import run_sweep

  spec = importlib.util.spec_from_file_location("demo", ROOT / "experiments" / "configs" / "synthetic.py")
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  config = module.get_config(None)
  config.rounds = rounds
  config.checkpoint_every = 0
  tic = time.perf_counter()
  rows = run_sweep(config, {"algorithm.client_lr": list(LRS)}, workdir, stack=stack, show_progress=False)
  wall = time.perf_counter() - tic
  print(json.dumps({"wall_s": wall, "final_accuracy": [r["final_accuracy"] for r in rows]}))


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--rounds", type=int, default=50)
  parser.add_argument("--_arm", choices=("stacked", "alone"), default=None, help=argparse.SUPPRESS)
  parser.add_argument("--_workdir", default=None, help=argparse.SUPPRESS)
  args = parser.parse_args()
  if args._arm:
    _one(args._arm == "stacked", args.rounds, args._workdir)
    return
  env = dict(os.environ, JAX_PLATFORMS=os.environ.get("JAX_PLATFORMS", "cpu"), PYTHONPATH=str(ROOT))
  results = {}
  for arm in ("stacked", "alone"):
    with tempfile.TemporaryDirectory() as tmp:
      load = os.getloadavg()
      out = subprocess.run(
        [sys.executable, __file__, "--rounds", str(args.rounds), "--_arm", arm, "--_workdir", tmp],
        env=env,
        capture_output=True,
        text=True,
        check=True,
      )
      results[arm] = json.loads(out.stdout.strip().splitlines()[-1])
      results[arm]["load"] = (load, os.getloadavg())
  s, a = results["stacked"], results["alone"]
  same = max(abs(x - y) for x, y in zip(s["final_accuracy"], a["final_accuracy"]))
  print(
    f"machine: {platform.processor() or platform.machine()}, {os.cpu_count()} cores, JAX_PLATFORMS={env['JAX_PLATFORMS']}"
  )
  print(
    "| points x rounds | stacked (one program) | one point at a time | speed-up | load (1-min avg, before/after each arm) |"
  )
  print("| --- | ---: | ---: | ---: | --- |")
  loads = "; ".join(f"{k}: {v['load'][0][0]:.1f} / {v['load'][1][0]:.1f}" for k, v in results.items())
  print(
    f"| {len(LRS)} x {args.rounds} | {s['wall_s']:.1f} s | {a['wall_s']:.1f} s | {a['wall_s'] / s['wall_s']:.2f}x | {loads} |"
  )
  print(f"largest final-accuracy difference between the arms: {same:.2e}")
  print("uptime:", subprocess.run(["uptime"], capture_output=True, text=True).stdout.strip())


if __name__ == "__main__":
  main()
