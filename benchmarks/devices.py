"""Round time against device count: 1, 2, 4 and 8 forced CPU devices, side by side.

Each device count runs in its own process (the device count is fixed when JAX starts) on the same
cohort: FedAvg, logistic regression (60 -> 10), 1,000 clients of 100 examples, 10 local steps of
batch 10. On one CPU, forced devices share the same cores, so this shows the engine's overhead of
sharding a cohort over a mesh, not a speed-up; on a machine with several accelerators the same
program spreads the lanes over them.

    .venv/bin/python benchmarks/devices.py [--counts 1,2,4,8] [--clients 1000] [--repeats 5]
"""

import argparse
import json
import os
import platform
import subprocess
import sys

WORKER = r"""
import json, sys, time
import jax, numpy as np, optax
from fedjaxscale import algorithms, models
from fedjaxscale.data import make_cohort
clients, repeats = int(sys.argv[1]), int(sys.argv[2])
rng = np.random.default_rng(0)
data = [{"x": rng.normal(size=(100, 60)).astype(np.float32), "y": rng.integers(0, 10, 100).astype(np.int32)}
        for _ in range(clients)]
cohort = make_cohort(data, 10, local_steps=10, seed=0)
model = models.logistic_regression(60, 10)
alg = algorithms.fedavg(model, optax.sgd(0.1))
state = alg.init(model.init(jax.random.key(0)))
t0 = time.perf_counter()
state, _ = alg.apply(state, cohort, jax.random.key(0))
jax.block_until_ready(state.params)
first = time.perf_counter() - t0
times = []
for r in range(repeats):
  t0 = time.perf_counter()
  state, d = alg.apply(state, cohort, jax.random.key(r + 1))
  jax.block_until_ready(state.params)
  times.append(time.perf_counter() - t0)
print(json.dumps({"devices": jax.device_count(), "first_round_s": first, "best_s": min(times),
                  "median_s": float(np.median(times)), "padding": d["padding_efficiency"]}))
"""


def main():
  parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument("--counts", default="1,2,4,8")
  parser.add_argument("--clients", type=int, default=1000)
  parser.add_argument("--repeats", type=int, default=5)
  args = parser.parse_args()
  rows = []
  for n in [int(c) for c in args.counts.split(",")]:
    env = dict(os.environ, JAX_PLATFORMS="cpu", XLA_FLAGS=f"--xla_force_host_platform_device_count={n}")
    out = subprocess.run(
      [sys.executable, "-c", WORKER, str(args.clients), str(args.repeats)],
      env=env,
      capture_output=True,
      text=True,
      check=True,
    )
    rows.append(json.loads(out.stdout.strip().splitlines()[-1]))
  base = rows[0]["best_s"]
  print(
    f"machine: {platform.processor() or platform.machine()}, {os.cpu_count()} cores, load "
    f"{os.getloadavg()[0]:.1f}; {args.clients} clients x 10 steps x batch 10, logistic regression; "
    f"best of {args.repeats} rounds after the first (compiling) one\n"
  )
  print(
    "| forced CPU devices | first round (compile) s | round s (best) | round s (median) | clients/s | vs 1 device |"
  )
  print("| ---: | ---: | ---: | ---: | ---: | ---: |")
  for r in rows:
    print(
      f"| {r['devices']} | {r['first_round_s']:.2f} | {r['best_s']:.4f} | {r['median_s']:.4f} | "
      f"{args.clients / r['best_s']:,.0f} | {r['best_s'] / base:.2f}x |"
    )


if __name__ == "__main__":
  main()
