"""Ditto's personal models against the global model on Synthetic(1, 1).

Li et al., "Ditto: Fair and Robust Federated Learning Through Personalization", ICML 2021. The
global model is trained by FedAvg; each client keeps a personal model pulled towards it by
lambda / 2 ||v - w||^2. Evaluation reports the personal models' per-client accuracy distribution
(p10/p50/p90) on the training clients' held-out data next to the global model's.

    fedjaxscale --config=experiments/configs/ditto.py --workdir=/tmp/fjs/ditto
    fedjaxscale --config=experiments/configs/ditto.py:lam1 --workdir=/tmp/fjs/ditto_lam1

Append ',small' (e.g. `:default,small`) for a seconds-long smoke run.
"""

from fedjaxscale.training.defaults import get_base


def get_config(arg: str | None = None):
  variants = set((arg or "default").split(","))
  unknown = variants - {"default", "lam1", "small"}
  if unknown:
    raise ValueError(f"variant {arg!r}: expected 'default' or 'lam1', optionally with ',small'")
  c = get_base()
  c.rounds = 40
  c.clients_per_round = 10
  c.data.num_clients = 100  # small enough that every client is selected several times
  c.data.alpha = 1.0
  c.data.beta = 1.0
  c.data.max_size = 1000
  c.local.batch_size = 10
  c.local.local_epochs = 1.0
  c.algorithm.name = "ditto"
  c.algorithm.client_lr = 0.01
  c.algorithm.personal_lr = 0.01
  c.algorithm.lam = 1.0 if "lam1" in variants else 0.1  # lambda
  c.system.overcommit = 1.3
  c.system.always_online = True  # a 100-client population under the diurnal traces has ~5 online
  c.eval_every = 10
  c.eval_personal = "personal"  # each test client also evaluated with its personal model
  c.checkpoint_every = 20
  if "small" in variants:
    c.rounds = 4
    c.clients_per_round = 5
    c.data.num_clients = 50
    c.data.max_size = 100
    c.eval_every = 2
    c.checkpoint_every = 2
  return c
