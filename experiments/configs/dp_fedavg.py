"""DP-FedAvg on Synthetic-IID: a privacy/utility sweep over the noise multiplier.

Learning Differentially Private Recurrent Language Models (McMahan et al., ICLR 2018,
arXiv:1710.06963), user level: every online client joins a round independently with
probability q (Poisson sampling, the accountant's assumption), its update is clipped to L2 norm
C on device, the sum gets Gaussian noise of std z C and is divided by the expected cohort q N.
Epsilon at delta = 1e-5 after every round comes from dp-accounting's RDP accountant. Every
client is online all the time here (the shipped traces' speeds are kept), so the realized rate is
q; ``:traces`` restricts sampling to the clients the traces put online, and the outputs report
the realized per-client rate beside epsilon.

    fedjaxscale --config=experiments/configs/dp_fedavg.py:z=1.0 --workdir=runs/dp_z1
    fedjaxscale --config=experiments/configs/dp_fedavg.py:z=0.5,rounds=50 --workdir=runs/dp_z05
    fedjaxscale --config=experiments/configs/dp_fedavg.py:eps=8 --workdir=runs/dp_eps8   # z from a budget
    fedjaxscale --config=experiments/configs/dp_fedavg.py:small --workdir=/tmp/fjs/dp   # seconds

Variants (comma-separated): ``z=<noise multiplier>``, ``eps=<target epsilon>``, ``rounds=<n>``,
``adaptive`` (clip to the median norm, Andrew et al.), ``pld`` (PLD accountant), ``traces``,
``small``.
"""

from fedjaxscale.training.defaults import get_base


def get_config(arg: str | None = None):
  c = get_base()
  c.rounds = 100
  c.data.num_clients = 1000
  c.data.iid = True  # one shared label function: the clipped, noised mean has a model to find
  c.clients_per_round = 50  # unused by Poisson selection beyond sizing; the cohort is ~ q N
  c.algorithm.name = "fedavg"
  c.algorithm.client_lr = 0.03
  c.algorithm.server_lr = 1.0
  c.algorithm.weighting = "uniform"  # DP gives every client weight 1 (its clipped update counts at most C)
  c.local.batch_size = 10
  c.local.local_epochs = 1.0
  c.system.selection = "poisson"
  c.system.sampling_rate = 0.05  # q: 50 clients a round on average
  c.system.always_online = True  # the accountant's Poisson assumption holds exactly (see ':traces')
  c.privacy.enabled = True
  c.privacy.clip_norm = 0.5  # C: about the median update norm of this task at round 1
  c.privacy.noise_multiplier = 1.0  # z
  c.privacy.delta = 1e-5
  c.eval_every = 5
  for part in (arg or "").split(","):
    key, _, value = part.partition("=")
    if not part:
      continue
    if key == "z":
      c.privacy.noise_multiplier = float(value)
    elif key == "eps":
      c.privacy.target_epsilon = float(value)
    elif key == "rounds":
      c.rounds = int(value)
    elif key == "adaptive":
      c.privacy.adaptive_quantile = 0.5
    elif key == "pld":
      c.privacy.accountant = "pld"
    elif key == "traces":
      c.system.always_online = False
    elif key == "small":  # for laptops and tests
      c.rounds = 3
      c.data.num_clients = 100
      c.data.max_size = 100
      c.system.sampling_rate = 0.1
      c.eval_every = 1  # every round: a run stopped early evaluates the same rounds as one that was not
      c.checkpoint_every = 2
    else:
      raise ValueError(
        f"unknown variant {part!r} of dp_fedavg.py; expected z=, eps=, rounds=, adaptive, pld, traces or small"
      )
  return c
