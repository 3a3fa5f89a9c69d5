"""FedAvg on the FedProx paper's Synthetic(1, 1) with the shipped 10k-client traces (the default
experiment until the demo moved to `synthetic.py`'s Synthetic-IID, kept here as it was).

Logistic regression, 1,000 clients of power-law sizes, K = 20 per round with 1.3x over-commit,
one local epoch of batch 10, availability checked over each client's whole window. The traces
put 3-8% of a population online at any hour (as FedScale's), so a population needs to be well
above K / 0.03 for every round to fill.

    fedjaxscale --config=experiments/configs/synthetic_fedprox.py --workdir=/tmp/fjs/synthetic_fedprox
    fedjaxscale --config=experiments/configs/synthetic_fedprox.py:small --workdir=/tmp/fjs/small   # seconds
"""

from fedjaxscale.training.defaults import get_base


def get_config(arg: str | None = None):
  c = get_base()
  c.rounds = 100
  c.clients_per_round = 20
  c.algorithm.name = "fedavg"
  c.algorithm.client_lr = 0.03
  c.local.batch_size = 10
  c.local.local_epochs = 1.0
  c.eval_every = 5
  # Synthetic(1, 1) gives every client its own label function: a logistic regression trained
  # centrally on all 1,000 clients' data reaches 0.39 test accuracy, so FedAvg at 2% of the
  # clients per round climbs slowly: it first reaches 0.12 at round 40 (0.4 simulated hours).
  c.target_accuracy = 0.12
  if arg == "small":  # for laptops and tests
    c.rounds = 4
    c.clients_per_round = 4
    c.data.num_clients = 200
    c.data.max_size = 200
    c.eval_every = 2
    c.checkpoint_every = 2
  elif arg:
    raise ValueError(f"unknown variant {arg!r} of synthetic_fedprox.py; expected 'small' or nothing")
  return c
