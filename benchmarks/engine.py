"""Engine benchmark: cohort throughput, CNN FLOP/s against the machine's matmul, padding efficiency.

A benchmark, not a test. One run measures, side by side:

1. clients/s and examples/s against cohort size for logistic regression on Synthetic-like data
   and for the FEMNIST CNN on random 28x28 uint8 images, for the engine's ``vmap`` and ``loop``
   backends through the public API (``fedavg(...).apply`` on a prebuilt cohort), beside a
   hand-written single ``jax.jit(jax.vmap(lax.scan))`` program of the same math (model apply,
   masked mean softmax cross-entropy, SGD steps, example-weighted mean of the deltas, server SGD
   step), and the ratio vmap-API / hand-written (target >= 0.8 at 1,000 clients);
2. the FEMNIST CNN's achieved FLOP/s (3 x forward FLOPs per example x examples/s) beside this
   machine's jit'd 2048x2048 float32 matmul FLOP/s (target >= 50%), plus a small breakdown of
   where the CNN's time goes (scan, vmap);
3. padding efficiency of a heavy-tailed (power-law Synthetic sizes) ``local_epochs=1`` cohort
   (target >= 0.9), from ``padding_report`` and from the engine's own counters;
4. a chunked run (``max_clients_per_chunk``) against an unchunked one at the largest size;
5. execution strategies: FEMNIST CNN clients/s and GFLOP/s per ``Engine(strategy=...)`` (and
   what ``"auto"`` chose, with its candidates' times) at FedScale's round shape (10 clients x 5
   local steps x batch 20), and logistic regression with the training features resident on the
   devices (``Engine.make_resident``; rows gathered on device) against gathered on the host.

Timing: every figure is the best of several repeats after a warm-up run (which compiles); the
cohort is built beforehand and its host-to-device transfer is inside the timed round for every
contender (the hand-written program takes the cohort's NumPy arrays too). Slow configurations
take fewer repeats (they stop once ``--min_time`` seconds have been timed), as each table says.

Usage::

  .venv/bin/python benchmarks/engine.py [--quick] [--out benchmarks/results/engine.md]
  .venv/bin/python benchmarks/engine.py --only strategies --out benchmarks/results/engine_strategies.md
"""

import argparse
import datetime
import hashlib
import inspect
import os
import platform
import subprocess
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np
import optax

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from fedjaxscale import algorithms, models
from fedjaxscale.core.buckets import bucket_size
from fedjaxscale.data import make_cohort, make_synthetic, padding_report, steps_for
from fedjaxscale.engine import Engine

F32 = jnp.float32


# -- timing -----------------------------------------------------------------------------------


def timed(fn, *, repeats, min_time, warmup=True, min_runs=2):
  """Best wall time of ``fn()`` over up to ``repeats`` runs (after a warm-up run when asked).

  Stops early once ``min_time`` seconds of timed runs have accumulated (at least ``min_runs`` runs).
  Returns ``(best_seconds, runs_timed, warmup_seconds)``.
  """
  warm = 0.0
  if warmup:
    t0 = time.perf_counter()
    fn()
    warm = time.perf_counter() - t0
  times = []
  while len(times) < repeats:
    t0 = time.perf_counter()
    fn()
    times.append(time.perf_counter() - t0)
    if len(times) >= min_runs and sum(times) >= min_time:
      break
  return min(times), len(times), warm


def matmul_flops(n=2048, repeats=10):
  a = jax.random.normal(jax.random.key(0), (n, n), F32)
  b = jax.random.normal(jax.random.key(1), (n, n), F32)
  mm = jax.jit(jnp.matmul)
  best, runs, _ = timed(lambda: mm(a, b).block_until_ready(), repeats=repeats, min_time=1e9)
  return 2 * n**3 / best, runs


# -- the hand-written program -----------------------------------------------------------------


def handwritten_round(model, client_lr, server_lr=1.0):
  """One FedAvg round as a single ``jit(vmap(scan))``: the math the engine path computes."""

  def client(params, x, y, mask):
    def step(p, xs):
      xb, yb, mb = xs

      def loss(p):
        logits = model.apply(p, {"x": xb}, None, True)
        ce = optax.softmax_cross_entropy_with_integer_labels(logits.astype(F32), yb)
        m = mb.astype(F32)
        return (ce * m).sum() / jnp.maximum(m.sum(), 1.0)

      g = jax.grad(loss)(p)
      new = jax.tree.map(lambda a, b: a - client_lr * b, p, g)
      real = jnp.any(mb)
      return jax.tree.map(lambda a, b: jnp.where(real, a, b), new, p), None

    final, _ = jax.lax.scan(step, params, (x, y, mask))
    return jax.tree.map(jnp.subtract, params, final)

  def round_fn(params, x, y, mask, num_examples):
    deltas = jax.vmap(client, in_axes=(None, 0, 0, 0))(params, x, y, mask)
    w = num_examples.astype(F32)
    mean = jax.tree.map(lambda d: jnp.tensordot(w, d, axes=1) / w.sum(), deltas)
    return jax.tree.map(lambda p, d: p - server_lr * d, params, mean)

  return jax.jit(round_fn)


# -- workloads --------------------------------------------------------------------------------


class Workload:
  def __init__(
    self, name, model, client_lr, steps, batch, make_clients, flops_per_example=None, hand_warmup_max_examples=10**9
  ):
    self.name, self.model, self.client_lr = name, model, client_lr
    # The hand-written program is compiled ahead of time; a warm-up run is added only where cheap.
    self.hand_warmup_max_examples = hand_warmup_max_examples
    self.steps, self.batch = steps, batch
    self.make_clients = make_clients
    self.flops_per_example = flops_per_example
    self.params = model.init(jax.random.key(0))

  def cohort(self, n):
    return make_cohort(self.make_clients(n), self.batch, local_steps=self.steps, shuffle=True, seed=0)


def logreg_workload(max_clients, steps, batch):
  # Synthetic(1, 1) of FedProx: 60 features, 10 classes, power-law sizes (>= 50, so every client
  # fills a batch of 10); capped at 200 examples to keep 10,000 clients' data small.
  _, data, sizes = make_synthetic(max_clients, alpha=1.0, beta=1.0, seed=0, max_size=200)
  offsets = np.concatenate([[0], np.cumsum(sizes)])

  def make_clients(n):
    return [
      {"x": data["x"][offsets[k] : offsets[k + 1]], "y": data["y"][offsets[k] : offsets[k + 1]]} for k in range(n)
    ]

  return Workload("logistic regression (60 -> 10)", models.logistic_regression(60, 10), 0.1, steps, batch, make_clients)


def cnn_workload(steps, batch):
  rng = np.random.default_rng(0)
  per_client = steps * batch

  def make_clients(n):
    x = rng.integers(0, 256, (n, per_client, 28, 28), dtype=np.uint8)
    y = rng.integers(0, 62, (n, per_client)).astype(np.int32)
    return [{"x": x[k], "y": y[k]} for k in range(n)]

  return Workload(
    "FEMNIST CNN",
    models.femnist_cnn(),
    0.01,
    steps,
    batch,
    make_clients,
    flops_per_example=models.femnist_cnn_flops_per_example(),
    hand_warmup_max_examples=500,
  )


def bench_throughput(w, sizes, args, loop_max):
  rows = []
  for n in sizes:
    cohort = w.cohort(n)
    real = cohort.real_example_steps
    part = cohort.parts[0]
    row = {"clients": n, "examples": real}

    # vmap through the public API.
    engine = Engine("vmap")
    alg = algorithms.fedavg(w.model, optax.sgd(w.client_lr), engine=engine)
    state = alg.init(w.params)
    out = {}

    def api_round():
      out["state"], out["diag"] = alg.apply(state, cohort, jax.random.key(1))
      jax.block_until_ready(out["state"].params)

    t, runs, warm = timed(api_round, repeats=args.repeats, min_time=args.min_time)
    row["vmap"] = (t, runs)
    row["vmap_padded_clients"] = round(real / out["diag"]["padding_efficiency"] / (w.steps * w.batch))
    row["vmap_compiles"] = engine.stats.compiles
    api_params = out["state"].params

    # The hand-written jit(vmap(scan)) on the same (unpadded) arrays; AOT-compiled, so the first
    # timed run is already compiled.
    hand = handwritten_round(w.model, w.client_lr)
    hand_args = (w.params, part.batch["x"], part.batch["y"], part.mask, np.asarray(cohort.num_examples, np.float32))
    compiled = hand.lower(*hand_args).compile()

    def hand_round():
      out["hand"] = compiled(*hand_args)
      jax.block_until_ready(out["hand"])

    t, runs, _ = timed(
      hand_round, repeats=args.repeats, min_time=args.min_time, warmup=real <= w.hand_warmup_max_examples
    )
    row["hand"] = (t, runs)
    row["max_abs_diff"] = max(
      float(jnp.max(jnp.abs(a - b))) for a, b in zip(jax.tree.leaves(api_params), jax.tree.leaves(out["hand"]))
    )

    # loop through the public API; the per-client program does not depend on the cohort size,
    # so a 10-client cohort warms it up.
    if n <= loop_max:
      loop_alg = algorithms.fedavg(w.model, optax.sgd(w.client_lr), engine=Engine("loop"))
      loop_state = loop_alg.init(w.params)
      loop_alg.apply(loop_state, w.cohort(min(n, 10)), jax.random.key(1))
      jax.block_until_ready(loop_state)

      def loop_round():
        s, _ = loop_alg.apply(loop_state, cohort, jax.random.key(1))
        jax.block_until_ready(s.params)

      t, runs, _ = timed(loop_round, repeats=args.repeats, min_time=args.min_time, warmup=False)
      row["loop"] = (t, runs)
    rows.append(row)
    print(
      f"  {w.name}: {n} clients done: vmap {row['vmap'][0]:.3f}s hand {row['hand'][0]:.3f}s "
      f"loop {row.get('loop', (float('nan'),))[0]:.3f}s",
      flush=True,
    )
  return rows


def fmt(x, digits=3):
  if x is None or (isinstance(x, float) and np.isnan(x)):
    return "-"
  if abs(x) >= 100:
    return f"{x:,.0f}"
  return f"{x:.{digits}g}"


def throughput_table(w, rows, loop_max, loop_note):
  lines = [
    f"**{w.name}**: local_steps={w.steps}, batch={w.batch}, client SGD lr={w.client_lr}, server SGD(1.0); "
    "best of n timed rounds (n in brackets) after a warm-up.",
    "",
    "| clients | examples/round | vmap API clients/s | vmap API examples/s | hand-written clients/s | "
    "hand-written examples/s | loop API clients/s | loop API examples/s | **vmap / hand** | vmap / loop | "
    "padded clients (vmap) | max abs diff vmap vs hand |",
    "| ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
  ]
  for r in rows:
    n, ex = r["clients"], r["examples"]
    tv, nv = r["vmap"]
    th, nh = r["hand"]
    if "loop" in r:
      tl, nl = r["loop"]
      loop_cells = f"{fmt(n / tl)} [{nl}] | {fmt(ex / tl)}"
      vl = fmt(tl / tv)
    else:
      loop_cells, vl = f"skipped ({loop_note}) | -", "-"
    lines.append(
      f"| {n:,} | {ex:,} | {fmt(n / tv)} [{nv}] | {fmt(ex / tv)} | {fmt(n / th)} [{nh}] | {fmt(ex / th)} | "
      f"{loop_cells} | **{th / tv:.2f}** | {vl} | {r['vmap_padded_clients']:,} | {r['max_abs_diff']:.1e} |"
    )
  return lines


def flops_table(w, rows, matmul):
  fpe = w.flops_per_example
  lines = [
    f"FLOPs per training example = 3 x forward FLOPs = 3 x {fpe:,} = {3 * fpe:,} (forward + 2x for the backward "
    "pass); achieved FLOP/s = that x examples/s. Matmul: jit'd 2048x2048 float32 `a @ b`, "
    f"best of {matmul[1]}: **{matmul[0] / 1e9:.1f} GFLOP/s**.",
    "",
    "| clients | vmap API GFLOP/s | % of matmul | hand-written GFLOP/s | % of matmul | loop API GFLOP/s | % of matmul |",
    "| ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
  ]
  for r in rows:
    cells = []
    for k in ("vmap", "hand", "loop"):
      if k in r:
        f = 3 * fpe * r["examples"] / r[k][0]
        cells += [f"{f / 1e9:.2f}", f"{100 * f / matmul[0]:.1f}%"]
      else:
        cells += ["-", "-"]
    lines.append(f"| {r['clients']:,} | " + " | ".join(cells) + " |")
  return lines


def cnn_breakdown(w, args):
  """Where the CNN's time goes: one training step, a scan of steps, and vmap over clients."""
  model, steps, batch = w.model, w.steps, w.batch
  rng = np.random.default_rng(1)
  p = w.params
  fpe3 = 3 * w.flops_per_example

  def loss(p, x, y, m):
    logits = model.apply(p, {"x": x}, None, True)
    ce = optax.softmax_cross_entropy_with_integer_labels(logits, y)
    return (ce * m).sum() / jnp.maximum(m.sum(), 1.0)

  def sgd_step(p, xs):
    x, y, m = xs
    g = jax.grad(loss)(p, x, y, m)
    return jax.tree.map(lambda a, b: a - w.client_lr * b, p, g), None

  def scan(p, x, y, m, unroll=1):
    return jax.lax.scan(sgd_step, p, (x, y, m), unroll=unroll)[0]

  clients = 10
  x = jnp.asarray(rng.integers(0, 256, (clients, steps, batch, 28, 28), dtype=np.uint8))
  y = jnp.asarray(rng.integers(0, 62, (clients, steps, batch)).astype(np.int32))
  m = jnp.ones((clients, steps, batch), F32)
  cases = [
    ("one client, one SGD step (no scan)", 1, batch, jax.jit(lambda p: sgd_step(p, (x[0, 0], y[0, 0], m[0, 0]))[0])),
    (f"one client, lax.scan over {steps} steps", 1, steps * batch, jax.jit(lambda p: scan(p, x[0], y[0], m[0]))),
    (
      f"one client, scan unroll=True ({steps} steps)",
      1,
      steps * batch,
      jax.jit(lambda p: scan(p, x[0], y[0], m[0], unroll=True)),
    ),
    (
      f"vmap over {clients} clients of the scan",
      clients,
      clients * steps * batch,
      jax.jit(lambda p: jax.vmap(scan, in_axes=(None, 0, 0, 0))(p, x, y, m)),
    ),
    (
      f"vmap over {clients} clients, scan unroll=True",
      clients,
      clients * steps * batch,
      jax.jit(
        lambda p: jax.vmap(lambda a, b, c, d: scan(a, b, c, d, unroll=True), in_axes=(None, 0, 0, 0))(p, x, y, m)
      ),
    ),
    (
      f"{clients} clients' examples as one batch, one model (no vmap; lower bound on cost)",
      clients,
      clients * steps * batch,
      jax.jit(
        lambda p: scan(
          p,
          x.swapaxes(0, 1).reshape(steps, clients * batch, 28, 28),
          y.swapaxes(0, 1).reshape(steps, -1),
          m.swapaxes(0, 1).reshape(steps, -1),
        )
      ),
    ),
  ]
  lines = [
    f"Where the CNN time goes (batch {batch}; best of several runs after a warm-up). Each program is "
    "SGD on the masked mean cross-entropy; the last row is not the same math (one model on the concatenated "
    "batch) and only shows what the same FLOPs cost without per-client weights.",
    "",
    "| program | examples/call | examples/s | GFLOP/s (3 x fwd) |",
    "| --- | ---: | ---: | ---: |",
  ]
  for name, _, ex, fn in cases:
    t, runs, _ = timed(lambda: jax.block_until_ready(fn(p)), repeats=args.repeats, min_time=args.min_time / 2)
    lines.append(f"| {name} | {ex} | {ex / t:,.0f} | {fpe3 * ex / t / 1e9:.1f} |")
    print(f"  breakdown: {name}: {ex / t:,.0f} ex/s", flush=True)
  return lines


def _client_dicts(sizes, data):
  offsets = np.concatenate([[0], np.cumsum(sizes)])
  return [
    {"x": data["x"][offsets[k] : offsets[k + 1]], "y": data["y"][offsets[k] : offsets[k + 1]]}
    for k in range(len(sizes))
  ]


def _layout(cohort):
  parts = cohort.parts
  lanes = [getattr(p, "num_lanes", None) or int(p.mask.shape[0]) for p in parts]
  return ", ".join(f"{n}x{p.num_steps}" for n, p in zip(lanes, parts))


def bench_padding(args, num_clients):
  """Padding efficiency of epoch-mode cohorts over heavy-tailed client sizes, for the cohort
  options the installed ``make_cohort`` offers (step buckets ``max_parts``, or lane packing)."""
  options = inspect.signature(make_cohort).parameters
  if "pack" in options:
    variants = [("pack=False", dict(pack=False)), ("pack=True (default)", dict(pack=True))]
  elif "max_parts" in options:
    variants = [(f"max_parts={m}" + (" (default)" if m == 6 else ""), dict(max_parts=m)) for m in (1, 2, 4, 6, 8, 12)]
  else:
    variants = [("default", {})]
  multiple_kw = "lane_multiple" if "lane_multiple" in options else None
  distributions = [
    ("FedProx Synthetic sizes: floor(lognormal(4, 2)) + 50, uncapped", dict()),
    ("LEAF synthetic sizes: floor(lognormal(3, 2)) + 5, capped at 1,000", dict(size_mean=3, min_size=5, max_size=1000)),
  ]
  lines = [
    f"{num_clients:,} Synthetic(1, 1) clients, local_epochs=1, batch 10. Efficiency = real example-steps / "
    "computed example-steps (`padding_report`; the lane/client axis padded to its bucket, a multiple of the "
    "device count: 1, or 4 as on a 4-device mesh"
    + (", the cohort built with `lane_multiple=4` for that column" if multiple_kw else "")
    + "). "
    "Layout = lanes x steps of each part.",
    "",
    "| client sizes | cohort option | parts | layout (1 device) | efficiency (1 device) | efficiency (4 devices) |",
    "| --- | --- | ---: | --- | ---: | ---: |",
  ]
  default = None
  for dist_name, kw in distributions:
    _, data, sizes = make_synthetic(num_clients, alpha=1.0, beta=1.0, seed=1, **kw)
    clients = _client_dicts(sizes, data)
    stats = (
      f"{dist_name} (min {sizes.min()}, median {int(np.median(sizes))}, mean {sizes.mean():.0f}, max {sizes.max():,})"
    )
    for label, opt in variants:
      if opt.get("pack") is False:
        # One lane per client, each as long as the longest client: computed from the sizes, as
        # building it would take lanes x longest x batch x 60 floats (tens of GB for these sizes).
        steps = steps_for(sizes, 10, local_epochs=1)
        real = int(np.ceil(sizes - 1e-9).sum())
        cells = []
        for m in (1, 4):
          computed = bucket_size(len(sizes), m) * bucket_size(int(steps.max())) * 10
          cells.append(f"**{real / computed:.3f}**")
        gb = len(sizes) * bucket_size(int(steps.max())) * 10 * 61 * 4 / 2**30
        lines.append(
          f"| {stats} | {label} (computed from the sizes; building it needs ~{gb:.1f} GB) | 1 | "
          f"{len(sizes)}x{bucket_size(int(steps.max()))} | {cells[0]} | {cells[1]} |"
        )
        stats = '"'
        continue
      cohort = make_cohort(clients, 10, local_epochs=1, seed=0, **opt)
      r1 = padding_report(cohort, 1)
      cohort4 = make_cohort(clients, 10, local_epochs=1, seed=0, **opt, **{multiple_kw: 4}) if multiple_kw else cohort
      r4 = padding_report(cohort4, 4)
      lines.append(
        f"| {stats} | {label} | {len(cohort.parts)} | {_layout(cohort)} | "
        f"**{r1['padding_efficiency']:.3f}** | **{r4['padding_efficiency']:.3f}** |"
      )
      stats = '"'
      if default is None and "default" in label:
        default = (dist_name, cohort)
  # The engine's own counters on the default cohort of the first distribution, logistic regression.
  dist_name, cohort = default
  engine = Engine("vmap")
  model = models.logistic_regression(60, 10)
  alg = algorithms.fedavg(model, optax.sgd(0.05), engine=engine)
  state = alg.init(model.init(jax.random.key(0)))
  t0 = time.perf_counter()
  _, diag = alg.apply(state, cohort, jax.random.key(1))
  first = time.perf_counter() - t0
  compiles = engine.stats.compiles
  t, runs, _ = timed(
    lambda: jax.block_until_ready(alg.apply(state, cohort, jax.random.key(1))[0].params),
    repeats=args.repeats,
    min_time=args.min_time,
    warmup=False,
  )
  lines += [
    "",
    f"Engine counters, one round of logistic regression on the default cohort of the first row group "
    f"(vmap, {jax.device_count()} device): padding_efficiency **{diag['padding_efficiency']:.3f}**, "
    f"{engine.stats.chunks // (runs + 1)} chunk(s) and {compiles} compiled program(s) per round; "
    f"{cohort.real_example_steps:,} real example-steps; first round {first:.1f} s (compiles), "
    f"then {t:.2f} s (best of {runs}).",
  ]
  return lines


def bench_chunking(w, n, chunk, args):
  cohort = w.cohort(n)
  lines = [
    f"{w.name}, {n:,} clients, local_steps={w.steps}, batch={w.batch}: unchunked vs "
    f"`Engine(max_clients_per_chunk={chunk})` (a running on-device sum over chunks). Best of "
    "several runs after a warm-up.",
    "",
    "| engine | chunks/round | compiled programs | round s | clients/s | relative |",
    "| --- | ---: | ---: | ---: | ---: | ---: |",
  ]
  base = None
  # "unchunked" sets a limit above the cohort: the engine's CPU default would chunk it too.
  for label, limit in (("unchunked", 10 * n), (f"max_clients_per_chunk={chunk}", chunk)):
    engine = Engine("vmap", max_clients_per_chunk=limit)
    alg = algorithms.fedavg(w.model, optax.sgd(w.client_lr), engine=engine)
    state = alg.init(w.params)
    t, runs, _ = timed(
      lambda: jax.block_until_ready(alg.apply(state, cohort, jax.random.key(1))[0].params),
      repeats=args.repeats,
      min_time=args.min_time,
    )
    base = base or t
    lines.append(
      f"| {label} | {engine.stats.chunks // (runs + 1)} | {engine.stats.compiles} | {t:.3f} | "
      f"{fmt(n / t)} | {base / t:.2f} |"
    )
  return lines


def bench_strategies(args):
  """FEMNIST CNN per execution strategy, through the public API (``fedavg(...).apply``)."""
  w = cnn_workload(args.strategy_steps, args.strategy_batch)
  n = args.strategy_clients
  cohort = w.cohort(n)
  fpe3 = 3 * w.flops_per_example
  real = cohort.real_example_steps
  names, skipped = [], []
  for name in (s for s in args.strategies.split(",") if s):
    try:
      Engine("loop" if name == "loop" else "vmap", strategy="auto" if name == "loop" else name)
      names.append(name)
    except ValueError as e:  # e.g. '+patches' without fedjaxscale.models.conv
      skipped.append(f"{name} ({e})")
  lines = [
    f"FEMNIST CNN (dense 2048), {n} clients x {w.steps} local steps x batch {w.batch} (FedScale's round shape), "
    f"{jax.device_count()} device(s); `fedavg(..., engine=Engine(strategy=s)).apply` on a prebuilt cohort, best of "
    "n timed rounds [n] after a warm-up round (which compiles, and under `auto` times the candidates). "
    f"GFLOP/s = 3 x {w.flops_per_example:,} forward FLOPs per example x examples/s.",
    "",
    "| strategy | first round s (compile + tuning) | round s | clients/s | GFLOP/s | compiles | load (1 min) |",
    "| --- | ---: | ---: | ---: | ---: | ---: | ---: |",
  ]
  ref, auto_choice = None, None
  for name in names:
    backend, strategy = ("loop", "auto") if name == "loop" else ("vmap", name)
    engine = Engine(backend, strategy=strategy)
    alg = algorithms.fedavg(w.model, optax.sgd(w.client_lr), engine=engine)
    state = alg.init(w.params)
    out = {}

    def api_round(alg=alg, state=state, out=out):
      out["state"], _ = alg.apply(state, cohort, jax.random.key(1))
      jax.block_until_ready(out["state"].params)

    t, runs, warm = timed(api_round, repeats=args.repeats, min_time=args.min_time)
    params = out["state"].params
    if ref is None:
      ref = params
    diff = max(float(jnp.max(jnp.abs(a - b))) for a, b in zip(jax.tree.leaves(ref), jax.tree.leaves(params)))
    if name == "auto":
      auto_choice = engine.strategy_choices
    load = os.getloadavg()[0]
    lines.append(
      f"| {name} | {warm:.1f} | {t:.3f} [{runs}] | {n / t:.2f} | {fpe3 * real / t / 1e9:.1f} | "
      f"{engine.stats.compiles} | {load:.1f} |"
    )
    print(
      f"  strategy {name}: {n / t:.2f} clients/s, {fpe3 * real / t / 1e9:.1f} GFLOP/s, max |diff| {diff:.1e}, "
      f"load {load:.1f}",
      flush=True,
    )
  if auto_choice:
    lines += ["", f"`auto` chose: {auto_choice}"]
  if skipped:
    lines += ["", "Skipped: " + "; ".join(skipped)]
  return lines


def bench_resident(args):
  """Logistic regression, cohorts gathered from a FederatedDataset: resident features vs host gather."""
  import tempfile

  from fedjaxscale.data import gather_cohort
  from fedjaxscale.data.dataset import write_dataset_from_clients

  sizes_ = [int(s) for s in args.resident_sizes.split(",")]
  num = max(sizes_) * 2
  _, data, sizes = make_synthetic(num, alpha=1.0, beta=1.0, seed=0, max_size=200)
  clients = _client_dicts(sizes, data)
  model = models.logistic_regression(60, 10)
  lines = [
    f"Logistic regression (60 -> 10), Synthetic(1, 1) dataset of {num:,} clients on disk (memory-mapped), "
    f"local_steps={args.lr_steps}, batch {args.lr_batch}; each round builds its cohort with `gather_cohort` "
    "(different clients each round, inside the timed round) and runs `fedavg(...).apply`. Host gather: the "
    "examples are gathered on the host and sent every chunk; resident: `engine.make_resident(train.features)` "
    "once, then only int32 row indices are sent and the examples gathered on the device.",
    "",
    "| clients/round | host gather clients/s | resident clients/s | resident / host | load (1 min) |",
    "| ---: | ---: | ---: | ---: | ---: |",
  ]
  with tempfile.TemporaryDirectory() as tmp:
    train = write_dataset_from_clients(os.path.join(tmp, "train"), [(f"c{i}", c) for i, c in enumerate(clients)])
    for n in sizes_:
      cells = []
      for resident in (False, True):
        engine = Engine(strategy="vmap")
        if resident:
          assert engine.make_resident(train.features)
        alg = algorithms.fedavg(model, optax.sgd(0.1), engine=engine)
        state = alg.init(model.init(jax.random.key(0)))
        rounds = iter(range(10**6))

        def one_round(alg=alg, state=state, rounds=rounds):
          r = next(rounds)
          picked = np.random.default_rng(r).choice(num, n, replace=False)
          cohort = gather_cohort(train, picked, args.lr_batch, local_steps=args.lr_steps, seed=r)
          jax.block_until_ready(alg.apply(state, cohort, jax.random.key(r))[0].params)

        t, runs, _ = timed(one_round, repeats=args.repeats, min_time=args.min_time)
        cells.append((t, runs))
      (th, nh), (tr, nr) = cells
      load = os.getloadavg()[0]
      lines.append(f"| {n:,} | {fmt(n / th)} [{nh}] | {fmt(n / tr)} [{nr}] | **{th / tr:.2f}** | {load:.1f} |")
      print(f"  resident {n}: host {n / th:.0f}/s resident {n / tr:.0f}/s load {load:.1f}", flush=True)
  return lines


def machine_lines():
  cpu, isa = "unknown", ""
  try:
    with open("/proc/cpuinfo") as f:
      for line in f:
        if line.startswith("model name") and cpu == "unknown":
          cpu = line.split(":", 1)[1].strip()
        if line.startswith("flags"):
          # Machines of one name have differed in vector units between sessions: say which this is.
          flags = set(line.split(":", 1)[1].split())
          wide = [f for f in ("avx2", "avx512f", "avx512_bf16", "amx_bf16") if f in flags]
          isa = f" ({', '.join(wide) or 'no AVX2'})"
          break
  except OSError:
    pass
  try:
    commit = subprocess.run(
      ["git", "rev-parse", "--short", "HEAD"],
      capture_output=True,
      text=True,
      cwd=os.path.dirname(os.path.abspath(__file__)),
    ).stdout.strip()
    dirty = subprocess.run(
      ["git", "status", "--porcelain", "fedjaxscale"],
      capture_output=True,
      text=True,
      cwd=os.path.dirname(os.path.abspath(__file__)),
    ).stdout.strip()
    if dirty:
      diff = subprocess.run(
        ["git", "diff", "HEAD", "--", "fedjaxscale"],
        capture_output=True,
        cwd=os.path.dirname(os.path.abspath(__file__)),
      ).stdout
      commit += f" + uncommitted changes in fedjaxscale/ (diff sha256 {hashlib.sha256(diff).hexdigest()[:12]})"
  except OSError:
    commit = "unknown"
  try:
    load = " ".join(f"{x:.2f}" for x in os.getloadavg())
  except OSError:
    load = "unknown"
  mem = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30
  return [
    f"- date: {datetime.datetime.now().isoformat(timespec='seconds')}; commit {commit}",
    f"- CPU: {cpu}{isa}; {os.cpu_count()} cores visible; {mem:.0f} GiB RAM; load average at start {load} "
    "(the machine is shared: other jobs may run during the benchmark, so figures are best-of-n)",
    f"- jax {jax.__version__} ({jax.default_backend()}), devices: {jax.devices()}; Python {platform.python_version()}",
  ]


def main():
  parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument("--quick", action="store_true", help="small sizes, for a smoke run (~1-2 minutes)")
  parser.add_argument("--out", default="benchmarks/results/engine.md", help="Markdown output file")
  parser.add_argument("--repeats", type=int, default=20, help="most timed repeats per figure")
  parser.add_argument(
    "--min_time",
    type=float,
    default=5.0,
    help="stop repeating once this many seconds have been timed (and at least 2 runs)",
  )
  parser.add_argument("--lr_sizes", default="10,100,1000,10000")
  parser.add_argument("--lr_steps", type=int, default=10)
  parser.add_argument("--lr_batch", type=int, default=10)
  parser.add_argument("--cnn_sizes", default="10,100")
  parser.add_argument("--cnn_steps", type=int, default=2)
  parser.add_argument("--cnn_batch", type=int, default=10)
  parser.add_argument("--loop_max", type=int, default=10000, help="largest cohort the loop backend runs")
  parser.add_argument("--padding_clients", type=int, default=1000)
  parser.add_argument("--chunk", type=int, default=1024, help="max_clients_per_chunk of the chunked run")
  parser.add_argument("--only", choices=("all", "strategies"), default="all", help="'strategies': sections 5 only")
  parser.add_argument("--strategies", default="vmap,vmap+patches,map+patches,map:2+patches,map:5+patches,auto,loop")
  parser.add_argument("--strategy_clients", type=int, default=10)
  parser.add_argument("--strategy_steps", type=int, default=5)
  parser.add_argument("--strategy_batch", type=int, default=20)
  parser.add_argument("--resident_sizes", default="100,1000")
  args = parser.parse_args()
  if args.quick:
    args.lr_sizes, args.cnn_sizes, args.repeats, args.min_time = "10,100", "10", 5, 1.0
    args.padding_clients, args.chunk = 200, 32
  lr_sizes = [int(s) for s in args.lr_sizes.split(",")]
  cnn_sizes = [int(s) for s in args.cnn_sizes.split(",")]

  t_start = time.perf_counter()
  out = ["# Engine benchmark", ""] + machine_lines() + [""]
  print("\n".join(out), flush=True)
  if args.only == "strategies":
    out += ["## 5. Execution strategies", ""] + bench_strategies(args) + [""]
    out += ["Resident training data:", ""] + bench_resident(args) + [""]
    out += [f"Total benchmark wall time: {time.perf_counter() - t_start:.0f} s.", ""]
    _write(out, args)
    return

  print("matmul...", flush=True)
  matmul = matmul_flops()

  print("logistic regression...", flush=True)
  lr = logreg_workload(max(lr_sizes), args.lr_steps, args.lr_batch)
  lr_rows = bench_throughput(lr, lr_sizes, args, args.loop_max)

  print("FEMNIST CNN...", flush=True)
  cnn = cnn_workload(args.cnn_steps, args.cnn_batch)
  cnn_loop_max = min(args.loop_max, max(cnn_sizes))
  cnn_rows = bench_throughput(cnn, cnn_sizes, args, cnn_loop_max)
  print("CNN breakdown...", flush=True)
  breakdown = cnn_breakdown(cnn, args)

  print("padding...", flush=True)
  padding = bench_padding(args, args.padding_clients)
  print("chunking...", flush=True)
  chunking = bench_chunking(lr, max(lr_sizes), args.chunk, args)

  cnn_skipped = [s for s in (10, 100, 1000, 10000) if s > max(cnn_sizes)]
  out += ["## 1. Throughput against cohort size", ""]
  out += throughput_table(lr, lr_rows, args.loop_max, f"> {args.loop_max:,} clients") + [""]
  out += throughput_table(cnn, cnn_rows, cnn_loop_max, "time") + [""]
  if cnn_skipped:
    out += [
      f"CNN cohorts of {', '.join(f'{s:,}' for s in cnn_skipped)} clients are skipped: at the measured "
      "examples/s one round would take longer than this whole benchmark's time budget (~15 minutes).",
      "",
    ]
  out += [
    "vmap / hand = hand-written round time / vmap-API round time (target >= 0.8 at 1,000 clients). "
    "The vmap API pads the client axis to its bucket (column 'padded clients') and also computes "
    "per-client metrics and the non-finite check; the hand-written program runs exactly the real clients. "
    "'max abs diff' compares the new global parameters of both (same cohort, same math).",
    "",
  ]
  out += ["## 2. FEMNIST CNN FLOP/s against the machine's matmul", ""] + flops_table(cnn, cnn_rows, matmul) + [""]
  out += breakdown + [""]
  out += ["## 3. Padding efficiency, heavy-tailed epoch-mode cohort", ""] + padding + [""]
  out += ["## 4. Chunking overhead", ""] + chunking + [""]
  out += ["## 5. Execution strategies", ""] + bench_strategies(args) + [""]
  out += ["Resident training data:", ""] + bench_resident(args) + [""]
  out += [f"Total benchmark wall time: {time.perf_counter() - t_start:.0f} s.", ""]
  _write(out, args)


def _write(out, args):
  text = "\n".join(out)
  print(text)
  if args.out:
    os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
    with open(args.out, "w") as f:
      f.write(text)
    print(f"wrote {args.out}")


if __name__ == "__main__":
  main()
