"""FedScale's FEMNIST setup: the LEAF CNN, K = 50 with 1.3x over-commit, 5 local steps of 20.

Lai et al., "FedScale: Benchmarking Model and System Performance of Federated Learning at
Scale", ICML 2022: FedAvg (an unweighted mean of client models), client lr 0.05 decayed x0.98
every 10 rounds to at least 5e-5, availability checked at selection and at the end
(`endpoints`), trace members mapped as FedScale does. The `yogi` variant uses FedYogi with
FedScale's defaults (eta 3e-3, tau 1e-8, beta1 0.9, beta2 0.99, v starting at tau).

FEMNIST itself comes from a converter (see data_pipelines/); point data.path at its output:

    fedjaxscale --config=experiments/configs/femnist_fedscale.py --workdir=/tmp/fjs/femnist \
        --config.data.path=/data/femnist_fjs
    fedjaxscale --config=experiments/configs/femnist_fedscale.py:yogi --workdir=/tmp/fjs/femnist_yogi \
        --config.data.path=/data/femnist_fjs
    fedjaxscale --config=experiments/configs/femnist_fedscale.py:resnet18 --workdir=/tmp/fjs/femnist_r18 \
        --config.data.path=/data/femnist_fjs
"""

from fedjaxscale.training.defaults import get_base


def get_config(arg: str | None = None):
  variants = set((arg or "fedavg").split(","))
  if variants - {"fedavg", "yogi", "resnet18", "small"}:
    raise ValueError(f"variant {arg!r}: expected 'fedavg', 'yogi' or 'resnet18', optionally with ',small'")
  c = get_base()
  c.rounds = 1000
  c.clients_per_round = 50
  c.data.kind = "directory"
  c.data.path = ""  # required: a converted FEMNIST dataset root
  c.model.name = "femnist_cnn"
  c.model.num_classes = 62
  c.local.batch_size = 20
  c.local.local_steps = 5
  c.local.local_epochs = 0.0
  c.algorithm.name = "fedavg"
  c.algorithm.weighting = "uniform"  # FedScale averages client models without weights
  c.algorithm.client_lr = 0.05
  c.algorithm.client_lr_decay = 0.98
  c.algorithm.client_lr_decay_every = 10
  c.algorithm.client_lr_min = 5e-5
  c.system.overcommit = 1.3
  c.system.overcommit_rounding = "floor"  # FedScale selects int(1.3 K) clients: 65 for K = 50
  c.system.availability_mode = "endpoints"
  c.system.mapping = "fedscale"
  c.eval_every = 10
  c.eval_batch_size = 512
  if "yogi" in variants:
    c.algorithm.name = "fedyogi"
    c.algorithm.server_lr = 3e-3
    c.algorithm.tau = 1e-8
    c.algorithm.beta1 = 0.9
    c.algorithm.beta2 = 0.99
    c.algorithm.initial_v = 1e-8  # FedScale starts v at tau
  if "resnet18" in variants:
    c.model.name = "resnet18_gn"
    c.model.width = 64
    c.model.groups = 2
  if "small" in variants:
    c.rounds = 2
    c.clients_per_round = 4
    c.model.dense = 64
    c.model.width = 8
    c.eval_every = 2
    c.checkpoint_every = 2
  return c
