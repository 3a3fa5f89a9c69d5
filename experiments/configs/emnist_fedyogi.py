"""Reddi et al.'s EMNIST character recognition with FedYogi.

Adaptive Federated Optimization (ICLR 2021, arXiv:2003.00295), EMNIST CR: the LEAF CNN over 62
classes, 10 clients a round, one local epoch of batch 20, client lr 10^-1.5, FedYogi with
eta 10^-2.5, tau 10^-3, beta1 0.9, beta2 0.99, 1,500 rounds. The data is FedJAX's or TFF's EMNIST,
converted (data_pipelines/README.md):

    python -m data_pipelines.sqlite --format=fedjax --dataset=emnist \\
        --train=federated_emnist_train.sqlite --test=federated_emnist_test.sqlite --output_dir=datasets/emnist
    fedjaxscale --config=experiments/configs/emnist_fedyogi.py --workdir=runs/emnist_fedyogi \\
        --config.data.path=datasets/emnist
"""

from fedjaxscale.training.defaults import get_base


def get_config(arg: str | None = None):
  c = get_base()
  c.rounds = 1500
  c.clients_per_round = 10
  c.data.kind = "directory"
  c.data.path = ""  # required: a converted EMNIST dataset root
  c.model.name = "femnist_cnn"
  c.model.num_classes = 62
  c.local.batch_size = 20
  c.local.local_epochs = 1.0
  c.algorithm.name = "fedyogi"
  c.algorithm.client_lr = 10**-1.5
  c.algorithm.server_lr = 10**-2.5
  c.algorithm.tau = 1e-3
  c.algorithm.beta1 = 0.9
  c.algorithm.beta2 = 0.99
  c.system.traces = ""  # traces generated for the population (the paper simulates no devices) ...
  c.system.always_online = True  # ... and every client is available, as in the paper
  c.eval_every = 50
  c.eval_batch_size = 512
  if arg == "small":
    c.rounds = 2
    c.clients_per_round = 2
    c.model.dense = 32
    c.eval_every = 2
    c.checkpoint_every = 2
  elif arg:
    raise ValueError(f"unknown variant {arg!r} of emnist_fedyogi.py; expected 'small' or nothing")
  return c
