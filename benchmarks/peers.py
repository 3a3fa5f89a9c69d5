"""fedjaxscale beside real peers, in one run: a PyTorch one-client-at-a-time loop and pfl.

Two workloads, each timed on both sides in the same run (best of n, after a warm-up):

1. **FEMNIST CNN** (LEAF's: 5x5 convolutions of 32 and 64 channels, max-pools, dense 2048, 62
   classes), 10 clients x 5 SGD steps of batch 20. PyTorch: for each client, copy the model, take 5
   steps, add the delta to a sum (2 threads, as this machine's cores). fedjaxscale: the same cohort
   through ``make_cohort`` + ``algorithms.fedavg(...).apply``. The PyTorch loop runs once before and
   once after fedjaxscale (its threads lose up to 10x when another process takes a core), each
   beside the load it saw; the headline ratio takes its faster run.
2. **Logistic regression**, 1,000 clients x 50 examples, 20 features, 2 classes, one local epoch
   of batch 10, a cohort of 100 and of 1,000 clients drawn every round. pfl 0.6 (PyTorch model,
   ``FederatedAveraging`` on a ``SimulatedBackend``, one process). fedjaxscale: every round
   ``gather_cohort`` from the on-disk dataset + ``fedavg(...).apply``; and a hand-written
   ``jit(vmap(scan))`` that keeps the data on the device and gathers the cohort by index (the
   fastest this math can go, with no host work at all). The two take turns, spell by spell, so
   that a burst of load on a shared machine hits both.

The peers run in their own virtualenv (``benchmarks/.venv-peers``, made by ``make bench-peers``),
never as dependencies of the package; this script re-runs itself there with ``--peer``.
Writes ``benchmarks/results/peers-cpu.md``.

Usage::

  make bench-peers                       # installs the peers, then runs this
  .venv/bin/python benchmarks/peers.py [--quick] [--out FILE]
"""

import argparse
import json
import os
import pathlib
import subprocess
import sys
import tempfile
import time

HERE = pathlib.Path(__file__).resolve().parent
PEER_PYTHON = HERE / ".venv-peers" / "bin" / "python"
THREADS = 2
LR_REPS = 5  # spells of the logistic-regression rounds, fedjaxscale and hand-written taking turns
# Rounds a spell: long enough that the pipeline's fill and drain (the first round's host work, the
# last round's device work, which overlap nothing) are a small part of it. Spells of 10 rounds,
# until 2026-12-07, counted them as a tenth of the spell.
LR_SPELL = 50
ROUNDS_PER_CALL = 10  # rounds a call of apply_rounds in the logistic-regression rows


def best_of(fn, repeats, min_time=3.0):
  """Best wall seconds of ``fn()`` after one warm-up call, and how many runs were timed."""
  fn()
  times = []
  while len(times) < repeats:
    tic = time.perf_counter()
    fn()
    times.append(time.perf_counter() - tic)
    if len(times) >= 2 and sum(times) >= min_time:
      break
  return min(times), len(times)


# -- the peers (run in .venv-peers; no JAX there) -----------------------------------------------


def torch_femnist(repeats):
  import copy

  import torch
  from torch import nn

  torch.set_num_threads(THREADS)
  torch.manual_seed(0)
  model = nn.Sequential(
    nn.Conv2d(1, 32, 5, padding=2),
    nn.ReLU(),
    nn.MaxPool2d(2),
    nn.Conv2d(32, 64, 5, padding=2),
    nn.ReLU(),
    nn.MaxPool2d(2),
    nn.Flatten(),
    nn.Linear(7 * 7 * 64, 2048),
    nn.ReLU(),
    nn.Linear(2048, 62),
  )
  clients = [
    (torch.rand(5, 20, 1, 28, 28), torch.randint(0, 62, (5, 20))) for _ in range(10)
  ]  # 10 clients x 5 steps x batch 20
  loss_fn = nn.CrossEntropyLoss()

  def round_():
    total = [torch.zeros_like(p) for p in model.parameters()]
    for x, y in clients:
      local = copy.deepcopy(model)
      opt = torch.optim.SGD(local.parameters(), lr=0.05)
      for s in range(5):
        opt.zero_grad()
        loss_fn(local(x[s]), y[s]).backward()
        opt.step()
      with torch.no_grad():
        for t, p, q in zip(total, model.parameters(), local.parameters()):
          t += q - p
    return total

  t, n = best_of(round_, repeats)
  return {"round_s": t, "runs": n, "torch": torch.__version__, "threads": torch.get_num_threads()}


def pfl_logreg(cohorts, rounds):
  import numpy as np
  import torch
  from pfl.aggregate.simulate import SimulatedBackend
  from pfl.algorithm import FederatedAveraging, NNAlgorithmParams
  from pfl.data.dataset import Dataset
  from pfl.data.federated_dataset import FederatedDataset
  from pfl.data.sampling import get_user_sampler
  from pfl.hyperparam import NNEvalHyperParams, NNTrainHyperParams
  from pfl.metrics import Weighted
  from pfl.model.pytorch import PyTorchModel
  from torch import nn

  torch.set_num_threads(THREADS)
  x, y = logreg_data(np)

  class LogReg(nn.Module):
    def __init__(self):
      super().__init__()
      self.linear = nn.Linear(20, 2)

    def forward(self, x):
      return self.linear(x)

    def loss(self, x, y, eval=False):
      self.eval() if eval else self.train()
      return nn.functional.cross_entropy(self(x), y)

    @torch.no_grad()
    def metrics(self, x, y, eval=True):
      loss = nn.functional.cross_entropy(self(x), y, reduction="sum").item()
      return {"loss": Weighted(loss, len(y))}

  data = {u: [torch.from_numpy(x[u]), torch.from_numpy(y[u]).long()] for u in range(len(x))}
  out = {}
  for cohort in cohorts:
    torch.manual_seed(0)
    net = LogReg()
    model = PyTorchModel(
      net, local_optimizer_create=torch.optim.SGD, central_optimizer=torch.optim.SGD(net.parameters(), 1.0)
    )
    train = FederatedDataset(lambda u: Dataset(data[u], user_id=u), get_user_sampler("random", list(data)))
    val = FederatedDataset(lambda u: Dataset(data[u], user_id=u), get_user_sampler("random", list(data)))
    backend = SimulatedBackend(training_data=train, val_data=val)
    params = NNAlgorithmParams(
      central_num_iterations=rounds, evaluation_frequency=10**9, train_cohort_size=cohort, val_cohort_size=None
    )
    train_params = NNTrainHyperParams(local_learning_rate=0.1, local_num_epochs=1, local_batch_size=10)
    eval_params = NNEvalHyperParams(local_batch_size=10)
    tic = time.perf_counter()
    FederatedAveraging().run(params, backend, model, train_params, eval_params)
    wall = time.perf_counter() - tic
    out[str(cohort)] = {"clients_per_s": cohort * rounds / wall, "rounds": rounds, "wall_s": wall}
  import pfl

  out["pfl"] = getattr(pfl, "__version__", "0.6")
  return out


def logreg_data(np):
  """1,000 clients x 50 examples, 20 features, 2 classes: each client's own linear rule plus noise."""
  rng = np.random.default_rng(0)
  w = rng.normal(size=(1000, 20, 2)).astype(np.float32)
  x = rng.normal(size=(1000, 50, 20)).astype(np.float32)
  y = np.argmax(np.einsum("cnf,cfk->cnk", x, w) + rng.gumbel(size=(1000, 50, 2)), -1).astype(np.int32)
  return x, y


# -- fedjaxscale's side (project venv) ----------------------------------------------------------


def fjs_femnist(repeats):
  import jax
  import numpy as np
  import optax

  from fedjaxscale import algorithms, models
  from fedjaxscale.data import make_cohort

  rng = np.random.default_rng(0)
  clients = [
    {"x": rng.random((100, 28, 28, 1), dtype=np.float32), "y": rng.integers(0, 62, 100).astype(np.int32)}
    for _ in range(10)
  ]
  model = models.femnist_cnn()
  cohort = make_cohort(clients, 20, local_steps=5, seed=0)
  alg = algorithms.fedavg(model, optax.sgd(0.05))
  state = alg.init(model.init(jax.random.key(0)))

  def round_():
    new, _ = alg.apply(state, cohort, jax.random.key(1))
    jax.block_until_ready(new.params)

  t, n = best_of(round_, repeats)
  return {"round_s": t, "runs": n}


def logreg_setup(tmp):
  """The logistic-regression workload in fedjaxscale: the dataset on disk (opened), the model, and
  the hand-written program (``hand(params, client_indices) -> params``: one round with the data on
  the device, the cohort gathered by index inside one ``jit(vmap(scan))``)."""
  import jax
  import jax.numpy as jnp
  import numpy as np
  import optax

  from fedjaxscale import models
  from fedjaxscale.data import FederatedDataset, write_dataset

  x, y = logreg_data(np)
  write_dataset(tmp / "lr", [f"c{i}" for i in range(1000)], {"x": x.reshape(-1, 20), "y": y.reshape(-1)}, [50] * 1000)
  train = FederatedDataset.open(tmp / "lr")
  model = models.logistic_regression(20, 2)
  xd, yd = jnp.asarray(x.reshape(1000, 5, 10, 20)), jnp.asarray(y.reshape(1000, 5, 10))

  @jax.jit
  def hand(params, idx):
    def client(xs, ys):
      def step(p, b):
        g = jax.grad(
          lambda p: optax.softmax_cross_entropy_with_integer_labels(
            model.apply(p, {"x": b[0]}, None, True), b[1]
          ).mean()
        )(p)
        return jax.tree.map(lambda a, g: a - 0.1 * g, p, g), None

      final, _ = jax.lax.scan(step, params, (xs, ys))
      return jax.tree.map(jnp.subtract, params, final)

    deltas = jax.vmap(client)(xd[idx], yd[idx])
    return jax.tree.map(lambda p, d: p - d.mean(0), params, deltas)

  return train, model, hand


def logreg_spells(alg, train, model, hand, k: int, block: int) -> dict:
  """The logistic-regression contenders at cohort ``k``, each ``spell(n)`` running ``n`` more rounds
  from where its last spell left, a new cohort drawn every round:

  - ``"apply"``: ``gather_cohort`` + ``alg.apply``, a round a call;
  - ``"apply_rounds"``: ``block`` cohorts gathered, then one ``alg.apply_rounds`` call (``n // block``
    calls a spell);
  - ``"hand"``: the hand-written program (``logreg_setup``), a round a call.

  ``apply`` and the hand-written program draw the same clients round by round.
  """
  import jax
  import jax.numpy as jnp
  import numpy as np

  from fedjaxscale.data import gather_cohort

  key = jax.random.key(1)  # every round's key, made once (the hand-written program has none)
  keys = jnp.stack([key] * block)  # (stacked once, not by every apply_rounds call)
  rngs = {"apply": np.random.default_rng(0), "hand": np.random.default_rng(0), "apply_rounds": np.random.default_rng(1)}
  state = alg.init(model.init(jax.random.key(0)))
  box = {"apply": state, "apply_rounds": state, "hand": model.init(jax.random.key(0))}

  def cohort(name):
    members = rngs[name].choice(1000, k, replace=False)
    return gather_cohort(train, members, 10, local_epochs=1.0, seed=int(members[0]))

  def apply_spell(n):
    state = box["apply"]
    for _ in range(n):
      state, _ = alg.apply(state, cohort("apply"), key)
    box["apply"] = jax.block_until_ready(state)

  def rounds_spell(n):
    state = box["apply_rounds"]
    for _ in range(n // block):
      state, _ = alg.apply_rounds(state, [cohort("apply_rounds") for _ in range(block)], keys)
    box["apply_rounds"] = jax.block_until_ready(state)

  def hand_spell(n):
    params = box["hand"]
    for _ in range(n):
      params = hand(params, rngs["hand"].choice(1000, k, replace=False))
    box["hand"] = jax.block_until_ready(params)

  return {"apply": apply_spell, "apply_rounds": rounds_spell, "hand": hand_spell}


def fjs_logreg(cohorts, rounds, tmp, reps=5):
  """Clients/s of the API, of ``apply_rounds`` and of the hand-written program, ``reps`` spells of
  ``rounds`` rounds each (a multiple of ``ROUNDS_PER_CALL``, or less than it), taking turns
  (a burst of load then hits all alike): the best spell and the median of each."""
  import numpy as np
  import optax

  from fedjaxscale import algorithms

  train, model, hand = logreg_setup(tmp)

  out = {}
  for cohort_size in cohorts:
    alg = algorithms.fedavg(model, optax.sgd(0.1))
    block = min(ROUNDS_PER_CALL, rounds)  # a spell is whole blocks, gathered one block ahead
    spells = logreg_spells(alg, train, model, hand, cohort_size, block)
    api_spell, hand_spell, rounds_spell = spells["apply"], spells["hand"], spells["apply_rounds"]
    # Warm-up: two calls of each (the second compiles again: the server state's round counter
    # becomes a device array after the first update).
    api_spell(2)
    hand_spell(2)
    rounds_spell(2 * block)
    rates = {"api": [], "hand": [], "rounds": []}
    # A spell of apply_rounds is several blocks (at least 5): the host gathers block b + 1 while the
    # devices train block b, as `apply` gathers round r + 1 while round r trains.
    lengths = {"api": rounds, "hand": rounds, "rounds": max(rounds // block, 5) * block}
    for _ in range(reps):
      for name, spell in (("api", api_spell), ("hand", hand_spell), ("rounds", rounds_spell)):
        tic = time.perf_counter()
        spell(lengths[name])
        rates[name].append(cohort_size * lengths[name] / (time.perf_counter() - tic))
    out[str(cohort_size)] = {
      "clients_per_s": max(rates["api"]),
      "hand_clients_per_s": max(rates["hand"]),
      "rounds_clients_per_s": max(rates["rounds"]),
      "median_clients_per_s": float(np.median(rates["api"])),
      "median_hand_clients_per_s": float(np.median(rates["hand"])),
      "median_rounds_clients_per_s": float(np.median(rates["rounds"])),
      "rounds": rounds,
      "reps": reps,
      "strategy": [c["chosen"] for c in alg.engine.strategy_choices],
    }
  return out


# -- the report ---------------------------------------------------------------------------------


def run_peer(name, args):
  if not PEER_PYTHON.exists():
    return {"error": f"{PEER_PYTHON.relative_to(HERE.parent)} is missing: run `make bench-peers`"}
  cmd = [str(PEER_PYTHON), str(pathlib.Path(__file__).resolve()), "--peer", name] + (["--quick"] if args.quick else [])
  env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
  done = subprocess.run(cmd, capture_output=True, text=True, env=env)
  if done.returncode != 0:
    return {"error": done.stderr.strip().splitlines()[-1] if done.stderr.strip() else f"exit {done.returncode}"}
  return json.loads(done.stdout.strip().splitlines()[-1])


def main():
  parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument("--peer", choices=["torch", "pfl"], help="(internal) run one peer and print JSON")
  parser.add_argument("--quick", action="store_true", help="fewer rounds and repeats")
  parser.add_argument("--out", default=str(HERE / "results" / "peers-cpu.md"))
  args = parser.parse_args()
  repeats, rounds = (3, 3) if args.quick else (10, 10)
  spell = rounds if args.quick else LR_SPELL
  cohorts = [100, 1000]
  if args.peer == "torch":
    print(json.dumps(torch_femnist(repeats)))
    return
  if args.peer == "pfl":
    print(json.dumps(pfl_logreg(cohorts, rounds)))
    return

  sys.path.insert(0, str(HERE.parent))
  sys.path.insert(0, str(HERE))
  from engine import machine_lines

  load = os.getloadavg()
  # PyTorch's threads slow down by up to 10x when another process takes a core, so the PyTorch
  # loop runs before and after fedjaxscale, each with the load it saw; the ratio uses its faster run.
  torch_runs = []
  for side in ("before", "after"):
    if side == "after":
      fjs_load = os.getloadavg()[0]
      fjs_cnn = fjs_femnist(repeats)
      print("fedjaxscale FEMNIST", fjs_cnn, flush=True)
    run = dict(run_peer("torch", args), side=side, load=os.getloadavg()[0])
    print("torch", run, flush=True)
    torch_runs.append(run)
  with tempfile.TemporaryDirectory() as tmp:
    fjs_lr = fjs_logreg(cohorts, spell, pathlib.Path(tmp), reps=LR_REPS)
  print("fedjaxscale logreg", fjs_lr, flush=True)
  pfl_lr = run_peer("pfl", args)
  print("pfl", pfl_lr, flush=True)
  load_end = os.getloadavg()

  lines = [
    "# fedjaxscale beside its peers (CPU)",
    "",
    *machine_lines(),
    f"- load average (1, 5, 15 min) at start {load[0]:.2f} {load[1]:.2f} {load[2]:.2f}, at end {load_end[0]:.2f} "
    f"{load_end[1]:.2f} {load_end[2]:.2f}: figures from a shared machine are provisional",
    "",
    "## FEMNIST CNN, 10 clients x 5 SGD steps of batch 20",
    "",
    "| | round s (best of n) | 1-min load when it ended | **fedjaxscale speed-up** |",
    "| --- | ---: | ---: | ---: |",
    f"| fedjaxscale (`make_cohort` + `fedavg(...).apply`) | {fjs_cnn['round_s']:.3f} [{fjs_cnn['runs']}] "
    f"| {fjs_load:.2f} (at its start) | |",
  ]
  ok = [r for r in torch_runs if "error" not in r]
  for r in torch_runs:
    if "error" in r:
      lines.append(f"| PyTorch loop, {r['side']} | not run: {r['error']} | | |")
    else:
      lines.append(
        f"| PyTorch {r['torch']} one client at a time, {r['threads']} threads, run {r['side']} fedjaxscale | "
        f"{r['round_s']:.3f} [{r['runs']}] | {r['load']:.2f} | {r['round_s'] / fjs_cnn['round_s']:.2f}x |"
      )
  if ok:
    best = min(r["round_s"] for r in ok)
    lines += ["", f"Against PyTorch's faster run: **{best / fjs_cnn['round_s']:.2f}x**."]
  lines += [
    "",
    "## Logistic regression, 1,000 clients x 50 examples, 20 features, 2 classes, 1 epoch of batch 10",
    "",
    f"Clients/s, a new cohort every round: fedjaxscale (`gather_cohort` + `apply` a round; and "
    f"`apply_rounds`, {min(ROUNDS_PER_CALL, spell)} cohorts gathered then one call) and the hand-written program take "
    f"turns, {LR_REPS} spells of {spell} rounds each (`apply_rounds`: at least 5 calls) after warm-up rounds; best spell "
    f"(median spell). pfl: "
    f"{rounds} rounds after a warm-up round, in its own process.",
    "",
    "| cohort | fedjaxscale `apply` | `apply_rounds` | hand-written jit(vmap(scan)), data on device "
    "| **`apply` / hand** | **`apply_rounds` / hand** | pfl | **`apply` / pfl** | **`apply_rounds` / pfl** |",
    "| ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
  ]
  for c in cohorts:
    f = fjs_lr[str(c)]
    p = pfl_lr.get(str(c))
    pfl_cells = (
      f"{p['clients_per_s']:,.0f} | **{f['clients_per_s'] / p['clients_per_s']:.0f}x** | "
      f"**{f['rounds_clients_per_s'] / p['clients_per_s']:.0f}x**"
      if p
      else "- | - | -"
    )
    lines.append(
      f"| {c:,} | {f['clients_per_s']:,.0f} ({f['median_clients_per_s']:,.0f}) | {f['rounds_clients_per_s']:,.0f} "
      f"({f['median_rounds_clients_per_s']:,.0f}) | {f['hand_clients_per_s']:,.0f} "
      f"({f['median_hand_clients_per_s']:,.0f}) | **{f['clients_per_s'] / f['hand_clients_per_s']:.2f}** "
      f"({f['median_clients_per_s'] / f['median_hand_clients_per_s']:.2f}) | "
      f"**{f['rounds_clients_per_s'] / f['hand_clients_per_s']:.2f}** "
      f"({f['median_rounds_clients_per_s'] / f['median_hand_clients_per_s']:.2f}) | {pfl_cells} |"
    )
  lines += ["", "Engine strategy chosen: " + ", ".join(f"{c:,}: {fjs_lr[str(c)]['strategy']}" for c in cohorts) + "."]
  if "error" in pfl_lr:
    lines += ["", f"pfl not run: {pfl_lr['error']}"]
  else:
    lines += ["", f"pfl {pfl_lr['pfl']}, one process."]
  out = pathlib.Path(args.out)
  out.parent.mkdir(parents=True, exist_ok=True)
  out.write_text("\n".join(lines) + "\n")
  print("\n".join(lines))


if __name__ == "__main__":
  main()
