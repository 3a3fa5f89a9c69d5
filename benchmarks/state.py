"""Client-state benchmark: the store's gather and scatter per round, its memory, and what the
state path adds to a round.

A benchmark, not a test. One run measures:

1. the store (``fedjaxscale.state``) at populations of 10k, 100k and 1M clients with logistic
   regression's state (60 x 10 + 10 float32, SCAFFOLD's control variate): gather and scatter of
   a 1,000-client cohort per round (best of several rounds, after ``--rounds`` rounds of random
   cohorts have filled it), the store's bytes and the process's peak RSS, in memory and
   memory-mapped;
2. the FEMNIST CNN's state size (one copy of its parameters) and the store at 3,400 clients, in
   float32 and bfloat16;
3. a round at 1,000 clients of logistic regression: FedAvg (``fedavg(...).apply``) against
   SCAFFOLD with its store (gather + ``apply`` + scatter), same cohort, same engine; the
   overhead of the state path is the ratio (target: <= 1.10).

Usage::

  .venv/bin/python benchmarks/state.py [--quick]
"""

import argparse
import os
import resource
import subprocess
import sys
import tempfile
import time

import jax
import numpy as np
import optax

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from fedjaxscale import algorithms, models
from fedjaxscale.algorithms.scaffold import scaffold
from fedjaxscale.data import make_cohort
from fedjaxscale.engine import Engine
from fedjaxscale.state import ClientStateStore, StateLayout


def uptime() -> str:
  try:
    return subprocess.run(["uptime"], capture_output=True, text=True).stdout.strip()
  except OSError:
    return "?"


def peak_rss_mb() -> float:
  return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def best(fn, repeats):
  times = []
  for _ in range(repeats):
    tic = time.perf_counter()
    fn()
    times.append(time.perf_counter() - tic)
  return min(times)


def store_section(populations, cohort, fill_rounds, repeats):
  model = models.logistic_regression(60, 10)
  spec = jax.eval_shape(model.init, jax.random.key(0))
  layout = StateLayout.from_spec(spec)
  rows = []
  for n in populations:
    for backing in ("memory", "memmap"):
      with tempfile.TemporaryDirectory() as tmp:
        store = ClientStateStore(layout, n, backing, tmp)
        rng = np.random.default_rng(0)
        values = jax.tree.map(lambda s: rng.normal(size=(cohort,) + s.shape).astype(s.dtype), spec)
        for _ in range(fill_rounds):
          store.scatter(rng.choice(n, cohort, replace=False), values)
        idx = rng.choice(n, cohort, replace=False)
        gather = best(lambda idx=idx, store=store: store.gather(idx), repeats)
        scatter = best(lambda idx=idx, store=store: store.scatter(idx, values), repeats)
        rows.append((n, backing, store.num_stored, store.nbytes / 2**20, gather * 1e3, scatter * 1e3, peak_rss_mb()))
  print(f"\n### Store: gather/scatter of a {cohort:,}-client cohort ({fill_rounds} rounds filled first)\n")
  print(f"load: {uptime()}\n")
  print("| population | backing | states stored | store MiB | gather ms | scatter ms | peak RSS MiB |")
  print("| ---: | --- | ---: | ---: | ---: | ---: | ---: |")
  for n, backing, stored, mib, g, s, rss in rows:
    print(f"| {n:,} | {backing} | {stored:,} | {mib:,.1f} | {g:.2f} | {s:.2f} | {rss:,.0f} |")


def cnn_section():
  model = models.femnist_cnn(62)
  spec = jax.eval_shape(model.init, jax.random.key(0))
  print("\n### FEMNIST CNN state (one copy of its parameters)\n")
  print("| storage | bytes per client | 3,400 clients |")
  print("| --- | ---: | ---: |")
  for storage in ("native", "bfloat16"):
    layout = StateLayout.from_spec(spec, storage)
    print(f"| {storage} | {layout.row_bytes:,} | {layout.row_bytes * 3400 / 2**30:,.2f} GiB |")


def round_section(clients, repeats):
  rng = np.random.default_rng(0)
  data = [
    {"x": rng.normal(size=(n, 60)).astype(np.float32), "y": rng.integers(0, 10, n).astype(np.int32)}
    for n in rng.integers(20, 60, clients)
  ]
  engine = Engine("vmap")
  cohort = make_cohort(data, 10, local_steps=5, seed=0, lane_multiple=engine.client_multiple)
  model = models.logistic_regression(60, 10)
  params = model.init(jax.random.key(0))
  fedavg = algorithms.fedavg(model, optax.sgd(0.01), engine=engine)
  sc = scaffold(model, 0.01, num_clients=100_000, engine=engine)
  server_a = fedavg.init(params)
  server_b = sc.init(params)
  store = ClientStateStore(StateLayout.from_spec(sc.state_spec(server_b)), 100_000)
  idx = rng.choice(100_000, clients, replace=False)
  key = jax.random.key(1)

  def run_fedavg():
    s, _ = fedavg.apply(server_a, cohort, key)
    jax.block_until_ready(s.params)

  split = {"gather": [], "scatter": []}

  def run_scaffold():
    tic = time.perf_counter()
    states, fresh = store.gather(idx)
    split["gather"].append(time.perf_counter() - tic)
    s, _, new = sc.apply(server_b, cohort, key, states, fresh)
    jax.block_until_ready(s.params)
    tic = time.perf_counter()
    store.scatter(idx, new.states, new.written)
    split["scatter"].append(time.perf_counter() - tic)

  run_fedavg()
  run_scaffold()  # compile both
  a = best(run_fedavg, repeats)
  b = best(run_scaffold, repeats)
  print(f"\n### A round at {clients:,} clients of logistic regression (5 local steps, batch 10)\n")
  print(f"load: {uptime()}; devices: {jax.device_count()} ({jax.default_backend()})\n")
  print("| round | best s | ratio to FedAvg |")
  print("| --- | ---: | ---: |")
  print(f"| FedAvg | {a:.3f} | 1.00 |")
  print(f"| SCAFFOLD + store | {b:.3f} | {b / a:.2f} |")
  print(
    f"\nof which store gather {min(split['gather']) * 1e3:.1f} ms, scatter {min(split['scatter']) * 1e3:.1f} ms "
    "(best of the timed rounds)"
  )


def main():
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--quick", action="store_true", help="small sizes, few repeats (a smoke run)")
  args = parser.parse_args()
  if args.quick:
    store_section([10_000], 1000, 3, 2)
    round_section(100, 2)
  else:
    store_section([10_000, 100_000, 1_000_000], 1000, 100, 5)
    cnn_section()
    round_section(1000, 5)


if __name__ == "__main__":
  main()
