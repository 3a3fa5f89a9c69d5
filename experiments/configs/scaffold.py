"""SCAFFOLD against FedAvg on Synthetic(1, 1), on the same plan.

Karimireddy et al., "SCAFFOLD: Stochastic Controlled Averaging for Federated Learning", ICML 2020.
Both variants share the seed, so the scheduler picks the same clients at the same simulated times
and each client trains on the same batches; only the algorithm differs. The global training loss
(``eval_train``) is the comparison.

    fedjaxscale --config=experiments/configs/scaffold.py:scaffold --workdir=/tmp/fjs/scaffold
    fedjaxscale --config=experiments/configs/scaffold.py:fedavg --workdir=/tmp/fjs/scaffold_fedavg
    fedjaxscale compare /tmp/fjs/scaffold /tmp/fjs/scaffold_fedavg

Append ',small' (e.g. `:scaffold,small`) for a seconds-long smoke run.
"""

from fedjaxscale.training.defaults import get_base


def get_config(arg: str | None = None):
  variants = set((arg or "scaffold").split(","))
  unknown = variants - {"scaffold", "fedavg", "small"}
  if unknown or len(variants & {"scaffold", "fedavg"}) != 1:
    raise ValueError(f"variant {arg!r}: expected 'scaffold' or 'fedavg', optionally with ',small'")
  c = get_base()
  c.rounds = 40
  c.clients_per_round = 10  # |S| of N = 100: a client takes part about every 10 rounds
  c.data.num_clients = 100
  c.data.alpha = 1.0  # Synthetic(1, 1)
  c.data.beta = 1.0
  c.data.max_size = 1000
  c.local.batch_size = 10
  c.local.local_epochs = 1.0  # ragged local work: K is each client's own number of steps
  c.algorithm.name = "scaffold" if "scaffold" in variants else "fedavg"
  c.algorithm.client_lr = 0.01  # eta_l
  c.algorithm.server_lr = 1.0  # eta_g
  c.system.overcommit = 1.3
  # Every client reachable (speeds still from the traces): a 100-client population under the
  # shipped diurnal traces has about 5 clients online at a time.
  c.system.always_online = True
  c.eval_every = 5
  c.eval_train = True  # the global training loss
  c.checkpoint_every = 20
  if "small" in variants:
    c.rounds = 4
    c.clients_per_round = 5
    c.data.num_clients = 100
    c.data.max_size = 100
    c.eval_every = 2
    c.checkpoint_every = 2
  return c
