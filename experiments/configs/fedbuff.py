"""Asynchronous FedBuff on Synthetic(1, 1) (Nguyen et al., "Federated Learning with Buffered
Asynchronous Aggregation", AISTATS 2022), as FedScale runs it: K = 10 updates per server step,
updates staler than 5 steps discarded, the rest weighted 1/sqrt(1 + s); 30 clients in flight
out of 1,000 (about as many as the traces have online at once).

    fedjaxscale --config=experiments/configs/fedbuff.py --workdir=/tmp/fjs/fedbuff
    fedjaxscale --config=experiments/configs/fedbuff.py:small --workdir=/tmp/fjs/fedbuff_small
"""

from fedjaxscale.training.defaults import get_base


def get_config(arg: str | None = None):
  c = get_base()
  c.rounds = 200  # server steps
  c.clients_per_round = 10  # buffer size K
  c.system.mode = "async"
  c.system.max_concurrency = 30
  c.system.max_staleness = 5
  c.system.availability_mode = "window"
  c.algorithm.client_lr = 0.03
  c.local.local_epochs = 1.0
  c.eval_every = 10
  if arg == "small":
    c.rounds = 4
    c.clients_per_round = 4
    c.system.max_concurrency = 8
    c.data.num_clients = 200
    c.data.max_size = 200
    c.eval_every = 2
    c.checkpoint_every = 2
  elif arg:
    raise ValueError(f"unknown variant {arg!r} of fedbuff.py; expected 'small' or nothing")
  return c
