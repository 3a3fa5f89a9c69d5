"""Accelerator benchmark: the engine tables, CNN FLOP/s against the device's matmul, FedScale's
FEMNIST round at K = 50 and 1,300, and pfl's CIFAR-10 benchmark shape. Writes
``benchmarks/results/gpu-<device>.md``. Sized to finish within 8 minutes on one GPU.

A benchmark, not a test (the test suite runs ``--tiny`` on the CPU, to keep it working):

1. clients/s for FedAvg rounds through the public API (``fedavg(...).apply`` on a prebuilt
   cohort, host-to-device transfer included) beside the hand-written ``jit(vmap(scan))`` of
   ``benchmarks/engine.py``, for logistic regression (Synthetic(1, 1), 10 steps of batch 10) and
   the FEMNIST CNN (2 steps of batch 10), cohorts 10 to 10,000;
2. the CNN's achieved FLOP/s (3 x forward FLOPs x examples/s) beside this device's jit'd square
   matmul in float32 and bfloat16;
3. FedScale's FEMNIST setup (``experiments/configs/femnist_fedscale.py``: K clients with 1.3x
   over-commit, 5 local steps of 20, the LEAF CNN) on FEMNIST-shaped random data, every client
   online, through ``train_and_evaluate``: seconds a round after the first (which compiles);
4. pfl's CIFAR-10 benchmark shape: 1,000 clients of 50 32x32x3 images, 50 a round, one local
   epoch of batch 10, pfl's ``simple_cnn`` (two 3x3 convolutions of 32 and 64, max-pool, dense
   128; its dropout left out), each round's cohort gathered from the dataset
   (``gather_cohort`` + ``fedavg(...).apply``).

Usage::

  .venv/bin/python benchmarks/gpu.py [--tiny] [--out FILE]
"""

import argparse
import json
import os
import pathlib
import re
import sys
import tempfile
import time

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import engine as engine_bench  # benchmarks/engine.py: workloads, timing, the hand-written round

from fedjaxscale import algorithms, models
from fedjaxscale.data import FederatedDataset, gather_cohort, write_dataset
from fedjaxscale.engine import Engine

SIZES = {
  "lr": [10, 100, 1000, 10000],
  "cnn": [10, 100, 1000, 10000],
  "cnn_work": (2, 10),  # local steps, batch
  "hand_max_examples": 200_000,
  "fedscale_k": [50, 1300],
  "fedscale": dict(rounds=4, dense=2048, max_size=120, local_steps=5, batch_size=20),
  "pfl": (1000, 50, 50, 20),  # clients, a round, images a client, rounds
}
TINY = {
  "lr": [2, 4],
  "cnn": [2],
  "cnn_work": (1, 2),
  "hand_max_examples": 10_000,
  "fedscale_k": [2],
  "fedscale": dict(rounds=2, dense=16, max_size=24, local_steps=1, batch_size=2),
  "pfl": (8, 2, 10, 1),
}


def device_name() -> str:
  d = jax.devices()[0]
  kind = d.device_kind if d.platform != "cpu" else "cpu"
  return re.sub(r"[^a-z0-9]+", "-", kind.lower()).strip("-")


def matmul_rate(dtype, n, repeats):
  a = jax.random.normal(jax.random.key(0), (n, n), dtype)
  b = jax.random.normal(jax.random.key(1), (n, n), dtype)
  mm = jax.jit(jnp.matmul)
  best, _, _ = engine_bench.timed(lambda: mm(a, b).block_until_ready(), repeats=repeats, min_time=1.0)
  return 2 * n**3 / best


def engine_rows(w, sizes, hand_max_examples, args):
  """vmap API against the hand-written program (where its unchunked cohort is small enough)."""
  rows = []
  for n in sizes:
    cohort = w.cohort(n)
    real = cohort.real_example_steps
    alg = algorithms.fedavg(w.model, optax.sgd(w.client_lr), engine=Engine("vmap"))
    state = alg.init(w.params)

    def api_round(alg=alg, state=state, cohort=cohort):
      new, _ = alg.apply(state, cohort, jax.random.key(1))
      jax.block_until_ready(new.params)

    t_api, runs, _ = engine_bench.timed(api_round, repeats=args.repeats, min_time=args.min_time)
    row = {"clients": n, "examples": real, "api": (t_api, runs), "hand": None}
    if real <= hand_max_examples:
      part = cohort.parts[0]
      hand_args = (w.params, part.batch["x"], part.batch["y"], part.mask, np.asarray(cohort.num_examples, np.float32))
      compiled = engine_bench.handwritten_round(w.model, w.client_lr).lower(*hand_args).compile()
      row["hand"] = engine_bench.timed(
        lambda c=compiled, a=hand_args: jax.block_until_ready(c(*a)), repeats=args.repeats, min_time=args.min_time
      )[:2]
    rows.append(row)
    print(f"  {w.name} {n} clients: api {t_api:.4f}s hand {row['hand'] and row['hand'][0]}", flush=True)
  return rows


def engine_table(w, rows, matmul=None):
  fpe = w.flops_per_example
  head = "| clients | examples/round | API clients/s | hand-written clients/s | API / hand |"
  sep = "| ---: | ---: | ---: | ---: | ---: |"
  if fpe:
    head += " API TFLOP/s | % of fp32 matmul | % of bf16 matmul |"
    sep += " ---: | ---: | ---: |"
  lines = [f"**{w.name}**, {w.steps} local steps of batch {w.batch}; best of n rounds [n].", "", head, sep]
  for r in rows:
    n, t = r["clients"], r["api"][0]
    hand = f"{n / r['hand'][0]:,.0f} [{r['hand'][1]}]" if r["hand"] else "- (too large unchunked)"
    ratio = f"**{r['hand'][0] / t:.2f}**" if r["hand"] else "-"
    line = f"| {n:,} | {r['examples']:,} | {n / t:,.0f} [{r['api'][1]}] | {hand} | {ratio} |"
    if fpe:
      flops = 3 * fpe * r["examples"] / t
      line += (
        f" {flops / 1e12:.3f} | {100 * flops / matmul['float32']:.1f}% | {100 * flops / matmul['bfloat16']:.1f}% |"
      )
    lines.append(line)
  return lines


def femnist_like(root: pathlib.Path, num_clients: int, rng, max_size: int):
  """FEMNIST-shaped random data (28x28 uint8, 62 classes), at least 21 examples a client."""
  for split, n in (("train", num_clients), ("test", max(2, num_clients // 10))):
    sizes = rng.integers(21, max_size + 1, n)
    write_dataset(
      root / split,
      [f"w{i}" for i in range(n)],
      {"x": rng.integers(0, 256, (sizes.sum(), 28, 28), dtype=np.uint8), "y": rng.integers(0, 62, sizes.sum())},
      sizes,
    )
  return root


def fedscale_rounds(tmp: pathlib.Path, ks, rounds, dense, max_size, local_steps, batch_size):
  """Seconds a round of femnist_fedscale.py at each K (through train_and_evaluate)."""
  from fedjaxscale.training import train_and_evaluate

  sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1] / "experiments" / "configs"))
  import femnist_fedscale

  root = femnist_like(tmp / "femnist", int(max(ks) * 1.3) + 10, np.random.default_rng(0), max_size)
  out = []
  for k in ks:
    c = femnist_fedscale.get_config()
    c.data.path, c.clients_per_round, c.rounds = str(root), k, rounds
    c.system.always_online, c.eval_every, c.checkpoint_every = True, 0, 0
    c.model.dense = dense
    c.local.local_steps, c.local.batch_size = local_steps, batch_size
    workdir = tmp / f"k{k}"
    tic = time.perf_counter()
    summary = train_and_evaluate(c, workdir, show_progress=False)
    wall = time.perf_counter() - tic
    walls = [json.loads(line)["wall_s"] for line in (workdir / "metrics.jsonl").read_text().splitlines()]
    per_round = np.diff(walls)
    out.append(
      {
        "k": k,
        "first_s": walls[0],
        "round_s": float(np.median(per_round)) if len(per_round) else float("nan"),
        "rounds": rounds,
        "wall_s": wall,
        "compiles": summary["engine"]["compiles"],
      }
    )
    print(f"  femnist_fedscale K={k}: {out[-1]}", flush=True)
  return out


class PflCNN(nn.Module):
  """pfl's benchmark ``simple_cnn`` (its dropout left out)."""

  num_classes: int = 10

  @nn.compact
  def __call__(self, x, train: bool = False):
    x = x.astype(jnp.float32) / 255.0
    x = nn.relu(nn.Conv(32, (3, 3), padding="VALID")(x))
    x = nn.relu(nn.Conv(64, (3, 3), padding="VALID")(x))
    x = nn.max_pool(x, (2, 2), strides=(2, 2))
    x = nn.relu(nn.Dense(128)(x.reshape((x.shape[0], -1))))
    return nn.Dense(self.num_classes)(x)


def pfl_cifar_shape(tmp: pathlib.Path, num_clients, per_round, per_client, rounds):
  rng = np.random.default_rng(0)
  sizes = np.full(num_clients, per_client)
  total = int(sizes.sum())
  write_dataset(
    tmp / "cifar",
    [f"c{i}" for i in range(num_clients)],
    {"x": rng.integers(0, 256, (total, 32, 32, 3), dtype=np.uint8), "y": rng.integers(0, 10, total)},
    sizes,
  )
  train = FederatedDataset.open(tmp / "cifar")
  model = models.from_linen(PflCNN(), {"x": np.zeros((1, 32, 32, 3), np.uint8)}, num_classes=10, name="pfl_cnn")
  engine = Engine("vmap")
  alg = algorithms.fedavg(model, optax.sgd(0.1), engine=engine)
  state = alg.init(model.init(jax.random.key(0)))
  times = []
  for r in range(rounds + 2):
    tic = time.perf_counter()
    members = rng.choice(num_clients, per_round, replace=False)
    cohort = gather_cohort(train, members, 10, local_epochs=1.0, seed=r, lane_multiple=engine.client_multiple)
    state, _ = alg.apply(state, cohort, jax.random.key(r))
    jax.block_until_ready(state.params)
    times.append(time.perf_counter() - tic)
  steady = times[2:] or times[1:]  # the second round compiles again (the round counter becomes a device array)
  return {"first_s": times[0], "round_s": float(np.median(steady)), "best_s": float(min(steady)), "rounds": rounds}


def main():
  parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument("--tiny", action="store_true", help="tiny sizes (runs on a CPU in seconds; the test suite's)")
  parser.add_argument("--out", default="", help="Markdown file (default benchmarks/results/gpu-<device>.md)")
  parser.add_argument("--repeats", type=int, default=10)
  parser.add_argument("--min_time", type=float, default=2.0, help="stop repeating a figure after this many seconds")
  parser.add_argument("--sections", default="engine,fedscale,pfl", help="which of engine, fedscale, pfl to run")
  parser.add_argument("--fedscale_k", default="", help="K values of the FedScale round (default 50,1300)")
  args = parser.parse_args()
  sections = set(args.sections.split(","))
  if sections - {"engine", "fedscale", "pfl"}:
    parser.error(f"--sections: unknown {sorted(sections - {'engine', 'fedscale', 'pfl'})}")
  if args.tiny:
    args.repeats, args.min_time = 2, 0.0
    # A smoke run: every strategy candidate would be a compile of its own (most of the tiny run).
    from fedjaxscale.engine import autotune  # pylint: disable=g-import-not-at-top

    autotune.AUTOTUNE_MIN_SECONDS = float("inf")
  sizes = dict(TINY if args.tiny else SIZES)
  if args.fedscale_k:
    sizes["fedscale_k"] = [int(k) for k in args.fedscale_k.split(",")]
  device = device_name()
  out = pathlib.Path(args.out or f"benchmarks/results/gpu-{device}.md")
  start = time.perf_counter()
  lines = [f"# Accelerator benchmark: {jax.devices()[0].device_kind}", "", *engine_bench.machine_lines(), ""]
  if args.tiny:
    lines += ["**--tiny**: sizes shrunk to a smoke run; the figures mean nothing.", ""]

  n = 256 if args.tiny else 8192
  matmul = {dt: matmul_rate(getattr(jnp, dt), n, args.repeats) for dt in ("float32", "bfloat16")}
  lines += [
    "## Matmul",
    "",
    f"jit'd {n}x{n} `a @ b`: float32 **{matmul['float32'] / 1e12:.2f} TFLOP/s**, "
    f"bfloat16 **{matmul['bfloat16'] / 1e12:.2f} TFLOP/s** (best of up to {args.repeats}).",
    "",
  ]
  print("matmul", matmul, flush=True)

  if "engine" in sections:
    lr = engine_bench.logreg_workload(max(sizes["lr"]), 10, 10)
    cnn = engine_bench.cnn_workload(*sizes["cnn_work"])
    lines += ["## Engine", ""]
    lines += engine_table(lr, engine_rows(lr, sizes["lr"], sizes["hand_max_examples"], args)) + [""]
    lines += engine_table(cnn, engine_rows(cnn, sizes["cnn"], sizes["hand_max_examples"], args), matmul) + [""]

  with tempfile.TemporaryDirectory() as tmp:
    tmp = pathlib.Path(tmp)
    if "fedscale" in sections:
      lines += fedscale_lines(fedscale_rounds(tmp, sizes["fedscale_k"], **sizes["fedscale"]), sizes)
    if "pfl" in sections:
      lines += pfl_lines(pfl_cifar_shape(tmp, *sizes["pfl"]), sizes["pfl"])
  lines.append(f"Total {time.perf_counter() - start:.0f} s.")
  out.parent.mkdir(parents=True, exist_ok=True)
  out.write_text("\n".join(lines) + "\n")
  print(f"wrote {out}")


def fedscale_lines(fed, sizes):
  lines = [
    "## FedScale FEMNIST round (`femnist_fedscale.py`)",
    "",
    f"FEMNIST-shaped random data (28x28, 62 classes, 21-{sizes['fedscale']['max_size']} examples a client), "
    f"{sizes['fedscale']['local_steps']} local steps of {sizes['fedscale']['batch_size']}, every client online, "
    "no evaluation; seconds a round = median of the rounds after the first.",
    "",
    "| K | first round s (compiles) | seconds a round | rounds | compiled programs |",
    "| ---: | ---: | ---: | ---: | ---: |",
  ]
  lines += [
    f"| {r['k']:,} | {r['first_s']:.2f} | **{r['round_s']:.3f}** | {r['rounds']} | {r['compiles']} |" for r in fed
  ]
  return lines + [""]


def pfl_lines(pfl, shape):
  return [
    "## pfl's CIFAR-10 benchmark shape",
    "",
    f"{shape[0]:,} clients x {shape[2]} images (32x32x3), {shape[1]} a round, one epoch of batch 10, pfl's "
    "simple_cnn; each round gathers its cohort from the dataset.",
    "",
    "| first round s | seconds a round (median) | best | clients/s | rounds |",
    "| ---: | ---: | ---: | ---: | ---: |",
    f"| {pfl['first_s']:.2f} | **{pfl['round_s']:.4f}** | {pfl['best_s']:.4f} | {shape[1] / pfl['round_s']:,.0f} "
    f"| {pfl['rounds']} |",
    "",
  ]


if __name__ == "__main__":
  main()
