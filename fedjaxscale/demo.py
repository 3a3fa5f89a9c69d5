"""A short FedAvg run on the built-in Synthetic(1, 1) data: ``python -m fedjaxscale.demo``.

Writes the data set into a temporary directory, then trains logistic regression with FedAvg for a
few rounds (random cohorts, one local epoch each, ragged clients packed into lanes) and prints
per-round training loss and test accuracy.
"""

import argparse
import tempfile
import time

import jax
import numpy as np
import optax

from fedjaxscale import algorithms, models
from fedjaxscale.data import gather_cohort, write_synthetic
from fedjaxscale.engine import Evaluator


def main(argv=None):
  parser = argparse.ArgumentParser(description=__doc__)
  parser.add_argument("--clients", type=int, default=1000, help="population size")
  parser.add_argument("--cohort", type=int, default=100, help="clients per round")
  parser.add_argument("--rounds", type=int, default=30)
  parser.add_argument("--batch_size", type=int, default=10)
  parser.add_argument("--client_lr", type=float, default=0.03)
  parser.add_argument("--seed", type=int, default=0)
  args = parser.parse_args(argv)

  with tempfile.TemporaryDirectory() as root:
    splits = write_synthetic(root, args.clients, alpha=1.0, beta=1.0, seed=args.seed, max_size=1000)
    train, test = splits["train"], splits["test"]
    print(f"Synthetic(1, 1): {train.num_clients} clients, {train.num_examples} train / {test.num_examples} test "
          f"examples; {jax.device_count()} {jax.default_backend()} device(s)")
    model = models.logistic_regression(60, 10)
    algorithm = algorithms.fedavg(model, optax.sgd(args.client_lr))
    evaluator = Evaluator(model, algorithm.engine)
    state = algorithm.init(model.init(jax.random.key(args.seed)))
    rng = np.random.default_rng(args.seed)
    print(f"{'round':>5} {'train loss':>10} {'test acc':>9} {'p10 client acc':>14} {'padding eff':>11} {'secs':>6}")
    for r in range(args.rounds):
      start = time.perf_counter()
      chosen = rng.choice(train.num_clients, size=args.cohort, replace=False)
      cohort = gather_cohort(train, chosen, args.batch_size, local_epochs=1, seed=args.seed * 100_003 + r,
                             lane_multiple=algorithm.engine.client_multiple,
                             reuse_shapes=algorithm.engine.lane_shapes)
      state, diagnostics = algorithm.apply(state, cohort, jax.random.fold_in(jax.random.key(args.seed), r))
      result = evaluator(state.params, test).summary()
      print(f"{r + 1:>5} {diagnostics['train_loss']:>10.4f} {result['accuracy']:>9.4f} "
            f"{result['client_accuracy_p10']:>14.4f} {diagnostics['padding_efficiency']:>11.3f} "
            f"{time.perf_counter() - start:>6.2f}")


if __name__ == "__main__":
  main()
