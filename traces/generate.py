"""Generates the shipped trace files (a thin CLI over
`fedjaxscale.systems.generator`; parameters and calibration are documented
there and in traces/README.md).

Usage (from the repository root):

  python traces/generate.py --num_clients 10000 --seed 0 \
      --out traces/synthetic_10k.npz
  python traces/generate.py --num_clients 100000 --seed 1 \
      --out traces/synthetic_100k.npz

Prints summary statistics of the result (the figures quoted in the README).
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import sys

import numpy as np

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

from fedjaxscale.systems import (
  generator,
  io,
)


def summarize(traces) -> dict:
  """Statistics to compare with the calibration targets."""
  av = traces.availability
  slot_min = (av.ends.astype(np.float64) - av.starts) / 60.0
  hours = np.arange(0, 7 * 24, 1.0)
  online = np.array([av.online_mask(h * 3600.0).mean() for h in hours])
  return {
    "clients": traces.num_clients,
    "compute_ms_p05_p50_p95": np.percentile(traces.compute_ms, [5, 50, 95]).round(1).tolist(),
    "down_kbps_median": float(np.median(traces.down_kbps).round(0)),
    "share_below_3000_kbps": float((traces.down_kbps < 3000).mean().round(3)),
    "on_slots_per_client_week": round(av.starts.size / traces.num_clients, 1),
    "on_slot_minutes_p50_p90": np.percentile(slot_min, [50, 90]).round(1).tolist(),
    "online_share_hourly_min_mean_max": [
      round(float(online.min()), 3),
      round(float(online.mean()), 3),
      round(float(online.max()), 3),
    ],
  }


def main(argv=None) -> None:
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--num_clients", type=int, required=True)
  parser.add_argument("--seed", type=int, default=0)
  parser.add_argument("--out", required=True, help="output .npz path")
  args = parser.parse_args(argv)
  config = generator.TraceGeneratorConfig()
  traces = generator.generate_traces(args.num_clients, args.seed, config)
  stats = summarize(traces)
  meta = {
    "generator": "fedjaxscale.systems.generator.generate_traces",
    "seed": args.seed,
    "num_clients": args.num_clients,
    "config": dataclasses.asdict(config),
    "summary": stats,
  }
  io.save_traces(args.out, traces, metadata=meta)
  for k, v in stats.items():
    print(f"{k}: {v}")
  print(f"wrote {args.out} ({os.path.getsize(args.out) / 1e6:.1f} MB)")


if __name__ == "__main__":
  main()
