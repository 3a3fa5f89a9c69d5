"""The demo (`make demo`): FedAvg that visibly learns, on a simulated clock with real stragglers.

Logistic regression on Synthetic-IID (the FedProx paper's IID variant: one label function for
every client, features N(v, I) with one v): 1,000 clients of power-law sizes, K = 20 a round
picked among the clients the shipped 10,000-client traces have online (3-8% at any hour, so the
online count follows the day), 1.3x over-commitment: of the 26 asked, the 6 that are slowest
or go offline mid-round are left out (4-6 stragglers and 0-2 dropouts a round). One local epoch of batch 10,
client lr 0.1, 50 rounds, evaluated every 5: test accuracy passes the 0.7 target around round
25 (about a quarter of a simulated hour) and ends near 0.76.

    fedjaxscale --config=experiments/configs/synthetic.py --workdir=runs/demo          # = make demo
    fedjaxscale --config=experiments/configs/synthetic.py:small --workdir=/tmp/fjs/small   # seconds

The FedProx paper's non-IID Synthetic(1, 1) setup (the former default) is `synthetic_fedprox.py`.
"""

from fedjaxscale.training.defaults import get_base


def get_config(arg: str | None = None):
  c = get_base()
  c.rounds = 50  # server rounds
  c.clients_per_round = 20  # K: updates aggregated per round
  c.data.iid = True  # Synthetic-IID: one model fits every client, so accuracy climbs clearly
  c.data.num_clients = 1000  # well above K / 0.03, so every round fills from the online clients
  c.algorithm.name = "fedavg"  # FedAvg, weighted by examples
  c.algorithm.client_lr = 0.1  # client SGD learning rate
  c.local.batch_size = 10  # examples per local step
  c.local.local_epochs = 1.0  # one pass over each client's data
  c.system.overcommit = 1.3  # ask 26, keep the first 20 to finish: the rest are stragglers or dropouts
  c.eval_every = 5  # rounds between test evaluations
  c.target_accuracy = 0.7  # reached around round 25
  if arg == "small":  # for laptops and tests
    c.rounds = 4
    c.clients_per_round = 4
    c.data.num_clients = 200
    c.data.max_size = 200
    c.eval_every = 2
    c.checkpoint_every = 2
  elif arg:
    raise ValueError(f"unknown variant {arg!r} of synthetic.py; expected 'small' or nothing")
  return c
