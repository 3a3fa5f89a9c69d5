"""StackOverflow next-word prediction with FedYogi (Reddi et al., ICLR 2021, arXiv:2003.00295).

The LSTM (10,000 words + 4 special ids, embedding 96, LSTM 670, projection 96), 50 clients a
round, one local epoch of batch 16, client lr 10^-0.5, FedYogi with eta 10^-2, tau 10^-5,
1,500 rounds, sequences of 20 tokens. Token ids follow FedJAX's layout (pad 0, BOS 1, EOS 2, words
3..10,002, OOV 10,003), which the SQLite converter writes for both FedJAX and TFF sources.

    python -m data_pipelines.sqlite --format=tff --dataset=stackoverflow --train=stackoverflow.sqlite \\
        --test=stackoverflow.sqlite --vocab_file=stackoverflow.word_count --output_dir=datasets/stackoverflow
    fedjaxscale --config=experiments/configs/stackoverflow_nwp.py --workdir=runs/stackoverflow \\
        --config.data.path=datasets/stackoverflow
"""

from fedjaxscale.training.defaults import get_base


def get_config(arg: str | None = None):
  c = get_base()
  c.rounds = 1500
  c.clients_per_round = 50
  c.data.kind = "directory"
  c.data.path = ""  # required: a converted StackOverflow dataset root
  c.model.name = "stackoverflow_lstm"
  c.model.num_classes = 10004
  c.local.batch_size = 16
  c.local.local_epochs = 1.0
  c.algorithm.name = "fedyogi"
  c.algorithm.client_lr = 10**-0.5
  c.algorithm.server_lr = 1e-2
  c.algorithm.tau = 1e-5
  c.system.traces = ""  # traces generated for the population (the paper simulates no devices) ...
  c.system.always_online = True  # ... and every client is available, as in the paper
  c.eval_every = 100
  c.eval_batch_size = 512
  if arg == "small":
    c.rounds = 2
    c.clients_per_round = 2
    c.model.vocab_size = 50
    c.model.num_classes = 54
    c.model.lstm_sizes = (16,)
    c.model.embed_dim = 8
    c.eval_every = 2
    c.checkpoint_every = 2
  elif arg:
    raise ValueError(f"unknown variant {arg!r} of stackoverflow_nwp.py; expected 'small' or nothing")
  return c
