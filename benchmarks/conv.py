"""Convolution layouts on XLA:CPU for federated local training (FEMNIST CNN), one client at a time vs vmap.

The workload is the engine's: each of ``--clients`` clients runs ``--steps`` SGD steps (unrolled in
one program) on batches of ``--batch`` 28x28 images, with its own copy of the LEAF FEMNIST CNN
(conv5x5(32)-pool-conv5x5(64)-pool-dense(2048)-dense(62)). Two ways of running the cohort:

* ``seq``: one jitted client program called once per client (weights are plain arrays);
* ``vmap``: one jitted program ``vmap``-ed over the clients (weights carry a client axis, so a
  convolution becomes a grouped convolution unless it is written as a matmul).

Variants (convolution x pooling):

* ``lax``: ``lax.conv_general_dilated`` NHWC (flax's); ``lax_nchw``: the same in NCHW;
* ``slice``: im2col by strided slicing, NHWC, then one matmul (``fedjaxscale.models.conv``'s
  ``"patches"``); ``slice_nchw``: im2col by slicing in NCHW, patches ``[N, C*taps, H*W]``;
* ``cgdp``: ``lax.conv_general_dilated_patches`` (itself a convolution with a 0/1 kernel) + matmul;
* ``+rw``: ``lax.reduce_window`` max-pool (gradient: ``select_and_scatter``); ``+rs``: pooling as
  reshape + max.
* ``zoo:lax`` / ``zoo:patches``: the zoo's ``femnist_cnn`` traced under ``conv_implementation``;
  with ``--compute-dtype bfloat16`` also the zoo's mixed-precision models, and the FedProx
  logistic regression (60 features, 10 classes) in both dtypes.

GFLOP/s counts forward + backward as 3 x the forward multiply-adds x 2 of every example trained.
The machine's load average is printed next to the figures: on a shared machine they are provisional.

Measured 2026-12-01 on the 2-core development VM (AVX-512 BF16 / AMX-BF16), jaxlib 0.10.2, while
other jobs held the load average at 29-36 (so wall-clock figures are ~10x low; the CPU-second
figures are the ones to compare; best of 1, provisional)::

  variant            mode   GF/cpu-s   note
  lax+rw             seq        19.1   one client at a time, lax.conv (today's default)
  lax+rw             vmap        3.8   grouped convolutions: 5x slower than seq
  slice+rw           vmap       14.0   im2col by slicing, reduce_window pooling
  slice+rs           vmap       15.8   im2col by slicing, reshape pooling = zoo 'patches'
  slice_nchw+rs      vmap       11.9   NCHW patches [N, C*taps, H*W]
  cgdp+rs            vmap        2.4   conv_general_dilated_patches: a 0/1-kernel conv, ~12x the work
  zoo:patches        vmap       17.0   the zoo's femnist_cnn under conv_implementation('patches')
  zoo:patches:bf16   vmap        9.1   the same with compute_dtype='bfloat16': 1.9x slower
  logreg / :bf16     vmap    1.7/1.9   60x10 logistic regression: overhead-bound, no difference
  with XLA_FLAGS=--xla_cpu_use_onednn=true (load 12-22):
  zoo:patches        vmap       16.3   no gain over the default
  zoo:patches:bf16   vmap        8.5   bf16 still 1.9x slower: no AMX path reached
  logreg / :bf16     vmap    1.5/2.0

``--accuracy`` (FedAvg, 8 rounds x 5 clients x 5 steps x batch 20, same seeds, SGD 0.05): Synthetic(1, 1)
logistic regression test accuracy 0.7789 in both dtypes (loss 1.0017 vs 1.0022, parameters 4e-4
apart); FEMNIST CNN on 10-class prototype images 0.356 float32 vs 0.411 bfloat16 (loss 1.74 vs
1.70, parameters 8e-3 apart; 180 test examples, so within noise). bfloat16 costs no accuracy
here but is slower on this CPU: keep float32 the default.

Run (from the repository root)::

  JAX_PLATFORMS=cpu python benchmarks/conv.py
  XLA_FLAGS=--xla_cpu_use_onednn=true JAX_PLATFORMS=cpu python benchmarks/conv.py --only zoo:lax,zoo:patches
  JAX_PLATFORMS=cpu python benchmarks/conv.py --compute-dtype bfloat16 --only zoo:patches,zoo:patches:bf16,logreg,logreg:bf16
  JAX_PLATFORMS=cpu python benchmarks/conv.py --accuracy   # FedAvg float32 vs bfloat16: accuracy, loss
"""

import argparse
import itertools
import os
import platform
import time

import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax import lax

from fedjaxscale import algorithms, models
from fedjaxscale.data import make_cohort
from fedjaxscale.data.synthetic import make_synthetic
from fedjaxscale.engine import Engine
from fedjaxscale.models import conv as zoo_conv

# ------------------------------------------------------------------------------------------------
# Convolutions and pools, NHWC (kernel HWIO) unless named nchw (kernel OIHW).


def conv_lax(x, w):
  return lax.conv_general_dilated(x, w, (1, 1), "SAME", dimension_numbers=("NHWC", "HWIO", "NHWC"))


def conv_lax_nchw(x, w):
  return lax.conv_general_dilated(x, w, (1, 1), "SAME", dimension_numbers=("NCHW", "OIHW", "NCHW"))


def conv_slice(x, w):
  dn = lax.conv_dimension_numbers(x.shape, w.shape, ("NHWC", "HWIO", "NHWC"))
  return zoo_conv.conv_patches(x, w, (1, 1), "SAME", dimension_numbers=dn)


def conv_cgdp(x, w):
  kh, kw, c, f = w.shape
  # Output features are ordered (C, taps): channel-major.
  patches = lax.conv_general_dilated_patches(x, (kh, kw), (1, 1), "SAME", dimension_numbers=("NHWC", "OIHW", "NHWC"))
  return patches @ w.transpose(2, 0, 1, 3).reshape(c * kh * kw, f)


def conv_slice_nchw(x, w):
  n, c, h, wd = x.shape
  f, _, kh, kw = w.shape
  xp = jnp.pad(x, ((0, 0), (0, 0), (kh // 2, (kh - 1) // 2), (kw // 2, (kw - 1) // 2)))
  taps = [xp[:, :, i : i + h, j : j + wd] for i, j in itertools.product(range(kh), range(kw))]
  patches = jnp.stack(taps, axis=2).reshape(n, c * kh * kw, h * wd)  # (C, taps) = OIHW's row order
  return jnp.einsum("fk,nkp->nfp", w.reshape(f, c * kh * kw), patches).reshape(n, f, h, wd)


def pool_rw(x, nchw):
  window = (1, 1, 2, 2) if nchw else (1, 2, 2, 1)
  return lax.reduce_window(x, -jnp.inf, lax.max, window, window, "VALID")


def pool_rs(x, nchw):
  if nchw:
    n, c, h, w = x.shape
    return x.reshape(n, c, h // 2, 2, w // 2, 2).max(axis=(3, 5))
  n, h, w, c = x.shape
  return x.reshape(n, h // 2, 2, w // 2, 2, c).max(axis=(2, 4))


CONVS = {"lax": (conv_lax, False), "lax_nchw": (conv_lax_nchw, True), "slice": (conv_slice, False)}
CONVS |= {"slice_nchw": (conv_slice_nchw, True), "cgdp": (conv_cgdp, False)}
POOLS = {"rw": pool_rw, "rs": pool_rs}


def femnist_init(rng, nchw, dense=2048, classes=62):
  k = jax.random.split(rng, 4)
  he = jax.nn.initializers.lecun_normal()
  shape1, shape2 = ((32, 1, 5, 5), (64, 32, 5, 5)) if nchw else ((5, 5, 1, 32), (5, 5, 32, 64))
  in_axis, out_axis = (1, 0) if nchw else (-2, -1)
  conv_init = jax.nn.initializers.lecun_normal(in_axis=in_axis, out_axis=out_axis)
  return {
    "c1": conv_init(k[0], shape1),
    "b1": jnp.zeros(32),
    "c2": conv_init(k[1], shape2),
    "b2": jnp.zeros(64),
    "d1": he(k[2], (7 * 7 * 64, dense)),
    "e1": jnp.zeros(dense),
    "d2": he(k[3], (dense, classes)),
    "e2": jnp.zeros(classes),
  }


def femnist_loss(conv, pool, nchw):
  bshape = (1, -1, 1, 1) if nchw else (1, 1, 1, -1)

  def loss(p, batch):
    x = batch["x"][:, None] if nchw else batch["x"][..., None]
    x = pool(jax.nn.relu(conv(x, p["c1"]) + p["b1"].reshape(bshape)), nchw)
    x = pool(jax.nn.relu(conv(x, p["c2"]) + p["b2"].reshape(bshape)), nchw)
    x = x.reshape(x.shape[0], -1)
    x = jax.nn.relu(x @ p["d1"] + p["e1"])
    logits = (x @ p["d2"] + p["e2"]).astype(jnp.float32)
    return optax.softmax_cross_entropy_with_integer_labels(logits, batch["y"]).mean()

  return loss


def zoo_loss(model):
  def loss(p, batch):
    return model.loss(p, batch, jnp.ones(batch["y"].shape[0], bool))[0]

  return loss


# ------------------------------------------------------------------------------------------------


def client_train(loss, steps, lr=0.01):
  """``steps`` unrolled SGD steps of one client over ``batches [steps, batch, ...]``."""
  grad = jax.grad(loss)

  def train(params, batches):
    for s in range(steps):
      g = grad(params, jax.tree.map(lambda a, s=s: a[s], batches))
      params = jax.tree.map(lambda p, g: p - lr * g, params, g)
    return params

  return train


def time_best(fn, repeats):
  """Best wall-clock seconds and best CPU seconds (all threads of this process) of ``repeats`` runs.

  On a machine shared with other jobs, wall time counts the waits for a core; the CPU time of
  this process does not, so its figure (GFLOP per CPU-second) is the steadier one under load.
  """
  jax.block_until_ready(fn())  # compile and warm up
  best, best_cpu = np.inf, np.inf
  for _ in range(repeats):
    t, c = time.perf_counter(), time.process_time()
    jax.block_until_ready(fn())
    best, best_cpu = min(best, time.perf_counter() - t), min(best_cpu, time.process_time() - c)
  return best, best_cpu


def measure(loss, init, data, args, flops_per_example, modes):
  """Best-of-``repeats`` seconds and GFLOP/s per mode for ``clients x steps x batch`` examples."""
  train = client_train(loss, args.steps)
  params = jax.vmap(init)(jax.random.split(jax.random.key(0), args.clients))
  out = {}
  if "seq" in modes:
    one = jax.jit(train)
    per_client = [
      (jax.tree.map(lambda a, i=i: a[i], params), jax.tree.map(lambda a, i=i: a[i], data)) for i in range(args.clients)
    ]
    out["seq"] = time_best(lambda: [one(p, d) for p, d in per_client], args.repeats)
  if "vmap" in modes:
    many = jax.jit(jax.vmap(train))
    out["vmap"] = time_best(lambda: many(params, data), args.repeats)
  gflop = 3 * flops_per_example * args.clients * args.steps * args.batch / 1e9
  return {m: (s, gflop / s, gflop / cpu) for m, (s, cpu) in out.items()}


def prototype_images(num_clients, per_client, classes=10, classes_per_client=3, seed=0):
  """Learnable FEMNIST-shaped data: a fixed random 28x28 prototype per class plus noise, non-IID."""
  rng = np.random.default_rng(seed)
  prototypes = rng.random((classes, 28, 28)) < 0.3
  clients = []
  for _ in range(num_clients):
    y = rng.choice(rng.choice(classes, classes_per_client, replace=False), per_client).astype(np.int32)
    x = np.clip(prototypes[y] * 0.8 + rng.normal(0, 0.35, (per_client, 28, 28)), 0, 1)
    clients.append({"x": (x * 255).astype(np.uint8), "y": y})
  return clients


def synthetic_clients(num_clients, seed=0):
  """FedProx's Synthetic(1, 1) (60 features, 10 classes), one dict per client."""
  ids, features, sizes = make_synthetic(num_clients, alpha=1.0, beta=1.0, seed=seed, max_size=300)
  offsets = np.concatenate([[0], np.cumsum(sizes)])
  return [{k: v[offsets[i] : offsets[i + 1]] for k, v in features.items()} for i in range(len(ids))]


def accuracy_run(args):
  """FedAvg in float32 and in bfloat16 from the same initial parameters: final held-out accuracy and loss."""
  tasks = {
    "logreg": (
      lambda d: models.logistic_regression(60, 10, compute_dtype=d),
      synthetic_clients(args.clients * 3),
      0.05,
    ),
    "femnist_cnn": (lambda d: models.femnist_cnn(10, compute_dtype=d), prototype_images(args.clients * 3, 60), 0.05),
  }
  print(f"# FedAvg {args.rounds} rounds x {args.clients} clients x {args.steps} local steps x batch {args.batch}")
  print(
    f"{'task':<12} {'dtype':<9} {'test acc':>9} {'test loss':>10} {'train loss':>11} {'max |dparam|':>13} {'s':>7}  load"
  )
  for task, (factory, clients, lr) in tasks.items():
    split = [int(0.8 * len(c["y"])) for c in clients]
    train = [{k: v[:n] for k, v in c.items()} for c, n in zip(clients, split, strict=True)]
    test = {k: np.concatenate([c[k][n:] for c, n in zip(clients, split, strict=True)]) for k in clients[0]}
    finals = {}
    for dtype in ("float32", "bfloat16"):
      model = factory(dtype)
      alg = algorithms.fedavg(model, optax.sgd(lr), engine=Engine("vmap"))
      state = alg.init(jax.jit(model.init)(jax.random.key(0)))
      rng = np.random.default_rng(0)
      t = time.perf_counter()
      for r in range(args.rounds):
        chosen = rng.choice(len(train), args.clients, replace=False)
        cohort = make_cohort([train[i] for i in chosen], args.batch, local_steps=args.steps, seed=r)
        state, diag = alg.apply(state, cohort, jax.random.key(r))
      seconds = time.perf_counter() - t
      ev = jax.jit(model.evaluate)(state.params, test, np.ones(len(test["y"]), bool))
      finals[dtype] = state.params
      diff = max(
        float(np.abs(a - b).max()) for a, b in zip(jax.tree.leaves(finals["float32"]), jax.tree.leaves(state.params))
      )
      print(
        f"{task:<12} {dtype:<9} {float(ev['accuracy'] / ev['count']):9.4f} {float(ev['loss'] / ev['count']):10.4f} "
        f"{float(diag['train_loss']):11.4f} {diff:13.2e} {seconds:7.1f}  {load()}",
        flush=True,
      )


def load():
  return "load " + " ".join(f"{v:.2f}" for v in os.getloadavg())


def main():
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--clients", type=int, default=10)
  parser.add_argument("--steps", type=int, default=5)
  parser.add_argument("--batch", type=int, default=20)
  parser.add_argument("--repeats", type=int, default=3)
  parser.add_argument("--modes", default="seq,vmap")
  parser.add_argument("--only", default="", help="comma-separated variant names (default: all)")
  parser.add_argument("--compute-dtype", default="float32", choices=("float32", "bfloat16"))
  parser.add_argument("--accuracy", action="store_true", help="instead: FedAvg accuracy, float32 vs bfloat16")
  parser.add_argument("--rounds", type=int, default=30, help="--accuracy: rounds")
  args = parser.parse_args()
  if args.accuracy:
    accuracy_run(args)
    return
  modes = args.modes.split(",")
  rng = np.random.default_rng(0)
  shape = (args.clients, args.steps, args.batch)
  images = {"x": rng.random((*shape, 28, 28), np.float32), "y": rng.integers(0, 62, shape).astype(np.int32)}
  features = {"x": rng.normal(size=(*shape, 60)).astype(np.float32), "y": rng.integers(0, 10, shape).astype(np.int32)}

  variants = {}
  for (cname, (fn, nchw)), (pname, pool) in itertools.product(CONVS.items(), POOLS.items()):
    variants[f"{cname}+{pname}"] = (
      femnist_loss(fn, pool, nchw),
      lambda r, nchw=nchw: femnist_init(r, nchw),
      images,
      models.femnist_cnn_flops_per_example(),
    )
  dtypes = ["float32"] + (["bfloat16"] if args.compute_dtype == "bfloat16" else [])
  for dtype in dtypes:
    suffix = "" if dtype == "float32" else ":bf16"
    cnn = models.femnist_cnn(compute_dtype=dtype)
    for impl in zoo_conv.IMPLEMENTATIONS:
      variants[f"zoo:{impl}{suffix}"] = (
        models.with_conv_implementation(zoo_loss(cnn), impl),
        cnn.init,
        images,
        models.femnist_cnn_flops_per_example(),
      )
    if args.compute_dtype == "bfloat16":
      lr = models.logistic_regression(60, 10, compute_dtype=dtype)
      variants[f"logreg{suffix}"] = (zoo_loss(lr), lr.init, features, 60 * 10 * 2)
  only = [v for v in args.only.split(",") if v]
  unknown = sorted(set(only) - set(variants))
  if unknown:
    parser.error(f"--only: unknown variants {unknown}; known: {sorted(variants)}")

  print(
    f"# {platform.node()} {platform.processor() or platform.machine()}, jax {jax.__version__}, {os.cpu_count()} CPUs"
  )
  print(f"# XLA_FLAGS={os.environ.get('XLA_FLAGS', '')!r}")
  print(f"# {args.clients} clients x {args.steps} unrolled SGD steps x batch {args.batch}; best of {args.repeats}")
  print("# GF/s: GFLOP per wall-clock second; GF/cpu-s: per CPU-second of this process (steadier under load)")
  header = " ".join(f"{m + ' s':>9} {m + ' GF/s':>10} {m + ' GF/cpu-s':>14}" for m in modes)
  print(f"{'variant':<18} {header}  load")
  for name, (loss, init, data, flops) in variants.items():
    if only and name not in only:
      continue
    res = measure(loss, init, data, args, flops, modes)
    row = " ".join(f"{res[m][0]:9.4f} {res[m][1]:10.1f} {res[m][2]:14.1f}" for m in modes)
    print(f"{name:<18} {row}  {load()}", flush=True)


if __name__ == "__main__":
  main()
