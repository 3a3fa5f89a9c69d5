"""Per-round cost of DP clipping + noise, of each update encoder and of simulated SecAgg.

Usage (from the repository root):

  python benchmarks/privacy.py                  # 1,000 clients, logistic regression (60 -> 10)
  python benchmarks/privacy.py --clients 200 --rounds 5
  python benchmarks/privacy.py --strategy vmap  # every variant on one engine strategy
  python benchmarks/privacy.py --workload mlp   # a round of configs/compression.py: 26 clients, 299k parameters

One cohort of ``--clients`` clients (20 examples each, 2 local steps of batch 10) runs through
plain FedAvg and through ``algorithms.dp.private_aggregation`` wrappers of the same FedAvg, the
variants taking turns round by round (so a change in the machine's load hits all of them alike);
the table gives the median and the fastest wall time of a round after two warm-up rounds
(compilation excluded) and both as overheads against plain FedAvg, with the machine's load
beside it. On a loaded machine the fastest round is the steadier figure. The error-feedback row
gathers and scatters its residuals through a ``ClientStateStore`` in memory, as a run does.

``--strategy`` pins the engine's execution strategy for every variant; the default ``auto``
times the candidates per program, so plain FedAvg and an encoded variant may run different
strategies (each is then what a user gets), which a pinned strategy rules out.
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
import time

import jax
import numpy as np
import optax

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

from fedjaxscale import algorithms, models
from fedjaxscale.algorithms import dp, encoders, secagg
from fedjaxscale.algorithms.stateful import StatefulAlgorithm
from fedjaxscale.data import make_cohort
from fedjaxscale.engine import Engine
from fedjaxscale.state import ClientStateStore, StateLayout


def variants(base, clients: int, k: int, d: int):
  blocks, m = encoders._rotation_shape(d, encoders.ROTATION_BLOCK)
  rotation = f"{blocks:,} x {m:,}"
  dpk = dict(clip_norm=0.5, noise_multiplier=1.0, expected_clients=float(clients))
  return {
    "fedavg (plain)": base,
    "DP: clip + noise": dp.private_aggregation(base, **dpk),
    "DP + adaptive clipping": dp.private_aggregation(base, adaptive=dp.AdaptiveClipping(count_noise=50.0), **dpk),
    "quantize 1 bit": dp.private_aggregation(base, encoder=encoders.stochastic_quantizer(1)),
    "quantize 8 bits": dp.private_aggregation(base, encoder=encoders.stochastic_quantizer(8)),
    f"quantize 4 bits, rotated ({rotation} blocks)": dp.private_aggregation(
      base, encoder=encoders.stochastic_quantizer(4, rotate=True)
    ),
    f"top-k (k = {k:,})": dp.private_aggregation(base, encoder=encoders.top_k(k)),
    f"top-k (k = {k:,}) + error feedback": dp.private_aggregation(base, encoder=encoders.top_k(k), error_feedback=True),
    "DP + SecAgg 20 bits": dp.private_aggregation(base, secure_aggregation=secagg.secagg(20, 100.0), **dpk),
  }


def main(argv=None):
  parser = argparse.ArgumentParser()
  parser.add_argument("--workload", choices=("logreg", "mlp"), default="logreg")
  parser.add_argument("--clients", type=int, default=None, help="default: 1,000 (logreg), 26 (mlp)")
  parser.add_argument("--rounds", type=int, default=15)
  parser.add_argument("--strategy", default="auto", help="the engine's execution strategy for every variant")
  args = parser.parse_args(argv)
  rng = np.random.default_rng(0)
  mlp = args.workload == "mlp"
  args.clients = args.clients or (26 if mlp else 1000)
  # mlp: a round of configs/compression.py (26 clients of 10-199 examples, one local epoch: packed lanes).
  sizes = rng.integers(10, 200, args.clients) if mlp else np.full(args.clients, 20)
  clients = [
    {"x": rng.normal(size=(n, 60)).astype(np.float32), "y": rng.integers(0, 10, n).astype(np.int32)} for n in sizes
  ]
  model = models.mlp(60, 10, hidden=(512, 512)) if mlp else models.logistic_regression(60, 10)
  base = algorithms.fedavg(model, optax.sgd(0.05), engine=Engine(strategy=args.strategy))
  work = dict(local_epochs=1.0) if mlp else dict(local_steps=2)
  cohort = make_cohort(clients, 10, **work, seed=0, lane_multiple=base.engine.client_multiple)
  members = np.arange(args.clients)
  params = model.init(jax.random.key(0))
  params_count = sum(x.size for x in jax.tree.leaves(params))
  algs = variants(base, args.clients, max(1, params_count // 10), params_count)
  states = {name: alg.init(params) for name, alg in algs.items()}
  stores = {
    name: ClientStateStore(StateLayout.from_spec(alg.state_spec(states[name])), args.clients, "memory")
    for name, alg in algs.items()
    if isinstance(alg, StatefulAlgorithm)
  }
  times = {name: [] for name in algs}
  for r in range(args.rounds + 2):
    for name, alg in algs.items():
      t0 = time.perf_counter()
      if name in stores:
        residuals, fresh = stores[name].gather(members)
        states[name], _, new = alg.apply(states[name], cohort, jax.random.key(r), residuals, fresh)
        stores[name].scatter(members, new.states, new.written)
      else:
        states[name], _ = alg.apply(states[name], cohort, jax.random.key(r))
      jax.block_until_ready(states[name].params)
      if r >= 2:
        times[name].append(time.perf_counter() - t0)
  rows = [(name, float(np.median(t)), float(np.min(t))) for name, t in times.items()]
  plain, plain_min = rows[0][1], rows[0][2]
  load = os.getloadavg()
  what = (
    "an MLP 60-512-512-10, one local epoch of batch 10 over 10-199 examples"
    if mlp
    else "logistic regression 60->10, 2 local steps of batch 10"
  )
  print(f"{args.clients} clients, {what} ({params_count:,} parameters);")
  print(f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores, {jax.device_count()} JAX device(s);")
  print(f"engine strategy {args.strategy!r}; load average {load[0]:.1f} {load[1]:.1f} {load[2]:.1f};")
  print(f"{args.rounds} rounds after 2 warm-ups, the variants taking turns.\n")
  print("| aggregation | ms / round, median | overhead (median) | ms / round, fastest | overhead (fastest) |")
  print("| --- | ---: | ---: | ---: | ---: |")
  for name, t, t_min in rows:
    print(
      f"| {name} | {t * 1e3:.1f} | {(t / plain - 1) * 100:+.1f}% | {t_min * 1e3:.1f} | {(t_min / plain_min - 1) * 100:+.1f}% |"
    )
  choices = {c["chosen"] for c in base.engine.strategy_choices}
  if choices:
    print(f"\nstrategies chosen by timing: {sorted(choices)}")


if __name__ == "__main__":
  main()
