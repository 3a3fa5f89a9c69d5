"""Host scheduler benchmark: sync planning time, async events/s, memory.

Usage (from the repository root):

  python benchmarks/scheduler.py            # 10k, 100k, 1M clients
  python benchmarks/scheduler.py --quick    # 10k and 100k only

Generates populations with `fedjaxscale.systems.generate_traces` (a week of
availability), plans rounds with uniform selection (and Oort, for reference)
and prints a Markdown table. NumPy only.
"""

from __future__ import annotations

import argparse
import os
import platform
import resource
import sys
import time

import numpy as np

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

from fedjaxscale.scheduler import (
  AsyncConfig,
  AsyncPlanner,
  OortSelection,
  SyncConfig,
  SyncPlanner,
)
from fedjaxscale.systems import (
  LatencyModel,
  generate_traces,
  model_bits,
)

LM = LatencyModel(model_bits(1_000_000), local_steps=20, batch_size=20)


def max_rss_mb() -> float:
  return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def time_sync(traces, samples, k, rounds, policy=None, report=False):
  planner = SyncPlanner(traces, LM, SyncConfig(k), num_samples=samples, policy=policy, seed=0)
  rng = np.random.default_rng(0)
  times = []
  for i in range(rounds + 3):
    t0 = time.perf_counter()
    plan = planner.plan_round()
    dt = time.perf_counter() - t0
    if report:
      planner.report(plan, rng.random(plan.aggregated.size))
    if i >= 3:
      times.append(dt * 1e3)
  return float(np.mean(times)), float(np.max(times))


def time_async(traces, samples, k, concurrency, cohorts):
  planner = AsyncPlanner(traces, LM, AsyncConfig(k, concurrency), num_samples=samples, seed=0)
  t0 = time.perf_counter()
  for _ in range(cohorts):
    planner.next_plan()
  return planner.events / (time.perf_counter() - t0)


def main(argv=None):
  parser = argparse.ArgumentParser()
  parser.add_argument("--quick", action="store_true")
  parser.add_argument("--rounds", type=int, default=30)
  args = parser.parse_args(argv)
  sizes = [10_000, 100_000] + ([] if args.quick else [1_000_000])
  rows, mem = [], []
  for n in sizes:
    rss0 = max_rss_mb()
    t0 = time.perf_counter()
    traces = generate_traces(n, seed=0)
    gen_s = time.perf_counter() - t0
    samples = np.random.default_rng(0).integers(21, 500, n)
    mem.append((n, traces.nbytes / 1e6, traces.availability.starts.size / n, max_rss_mb(), rss0, gen_s))
    for k in (100, 1000):
      mean, worst = time_sync(traces, samples, k, args.rounds)
      rows.append((n, k, "uniform", f"{mean:.2f}", f"{worst:.2f}"))
    durations = LM.latency(traces, np.arange(n), samples).total
    oort = OortSelection(samples, durations, samples_cap=400)
    mean, worst = time_sync(traces, samples, 100, 10, oort, report=True)
    rows.append((n, 100, "oort", f"{mean:.2f}", f"{worst:.2f}"))
    # Concurrency stays well under the ~5% of clients online at a time.
    k, conc = (10, 100) if n < 100_000 else (100, 1000)
    eps = time_async(traces, samples, k, conc, 20)
    rows.append((n, k, f"async FedBuff, {conc:,} in flight", f"{eps:,.0f} events/s", ""))
    del traces, samples, durations, oort
  print(
    f"Machine: {platform.processor() or platform.machine()}, "
    f"{os.cpu_count()} CPUs, Python {platform.python_version()}, "
    f"NumPy {np.__version__}\n"
  )
  print("| clients | K | planner | ms per round (mean) | ms (max) |")
  print("| ---: | ---: | --- | ---: | ---: |")
  for r in rows:
    print("| " + " | ".join(f"{x:,}" if isinstance(x, int) else x for x in r) + " |")
  print("\n| clients | trace arrays (MB) | on-slots per client-week | process max RSS (MB) | generation (s) |")
  print("| ---: | ---: | ---: | ---: | ---: |")
  for n, mb, slots, rss, _, gen_s in mem:
    print(f"| {n:,} | {mb:.0f} | {slots:.1f} | {rss:.0f} | {gen_s:.1f} |")


if __name__ == "__main__":
  main()
