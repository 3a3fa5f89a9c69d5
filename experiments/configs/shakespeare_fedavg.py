"""FedAvg on Shakespeare (McMahan et al., AISTATS 2017), with the LSTM of Reddi et al.'s baselines.

Default: FedJAX's / TFF's Shakespeare (next character at every position, sequences of 80): the
char-LSTM (embedding 8, two LSTMs of 256), 10 clients a round, one local epoch of batch 4, client
lr 1, server SGD 1 (FedAvg), 1,200 rounds. Variant `:leaf`: LEAF's Shakespeare (predict the
character after an 80-character window), LEAF's model of the same shape, client lr 0.8.

    python -m data_pipelines.sqlite --format=fedjax --dataset=shakespeare \\
        --train=shakespeare_train.sqlite --test=shakespeare_test.sqlite --output_dir=datasets/shakespeare
    fedjaxscale --config=experiments/configs/shakespeare_fedavg.py --workdir=runs/shakespeare \\
        --config.data.path=datasets/shakespeare
    # LEAF's version:
    python -m data_pipelines.leaf --dataset=shakespeare --input_dir=leaf/data/shakespeare/data --output_dir=datasets/leaf_shakespeare
    fedjaxscale --config=experiments/configs/shakespeare_fedavg.py:leaf --workdir=runs/leaf_shakespeare \\
        --config.data.path=datasets/leaf_shakespeare
"""

from fedjaxscale.training.defaults import get_base


def get_config(arg: str | None = None):
  variants = set((arg or "").split(",")) - {""}
  if variants - {"leaf", "small"}:
    raise ValueError(f"variant {arg!r}: expected nothing or 'leaf', optionally with ',small'")
  c = get_base()
  c.rounds = 1200
  c.clients_per_round = 10
  c.data.kind = "directory"
  c.data.path = ""  # required: a converted Shakespeare dataset root
  c.model.name = "shakespeare_seq_lstm"
  c.model.num_classes = 90  # 86 characters + pad, BOS, EOS, OOV
  c.local.batch_size = 4
  c.local.local_epochs = 1.0
  c.algorithm.name = "fedavg"
  c.algorithm.client_lr = 1.0
  c.algorithm.server_lr = 1.0
  c.system.traces = ""  # traces generated for the population (the paper simulates no devices) ...
  c.system.always_online = True  # ... and every client is available, as in the paper
  c.eval_every = 50
  c.eval_batch_size = 512
  if "leaf" in variants:
    c.model.name = "shakespeare_lstm"
    c.model.num_classes = 80
    c.algorithm.client_lr = 0.8
  if "small" in variants:
    c.rounds = 2
    c.clients_per_round = 2
    c.model.lstm_sizes = (16,)
    c.eval_every = 2
    c.checkpoint_every = 2
  return c
