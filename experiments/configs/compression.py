"""Upload compression on the shipped traces: accuracy against simulated hours at 1-32 bits.

Each client's update is stochastically quantized on device to b bits a number after a random
Hadamard rotation (Suresh et al., "Distributed Mean Estimation with Limited Communication",
ICML 2017, arXiv:1611.00429) in blocks of ``compression.rotation_block`` = 4,096 numbers; the
scheduler times its upload from the encoder's exact size (``d' b + 64`` bits, d' the update's
size padded to a multiple of the block: 303,104 for 299,018 parameters), so upload time,
stragglers and round duration shrink with b while the update gets noisier. An MLP of 299k
parameters on Synthetic-IID makes the float32 upload (9.6 Mbit: 1.6 s at the traces' median
6 Mbit/s, 6 s at their 10th percentile) matter beside the local compute (at most 20 steps: clients
hold at most 200 examples). Measured: experiments/README.md.

    fedjaxscale --config=experiments/configs/compression.py:bits=4 --workdir=runs/q4
    fedjaxscale --config=experiments/configs/compression.py:bits=32 --workdir=runs/q32   # float32
    fedjaxscale --config=experiments/configs/compression.py:topk=10000 --workdir=runs/top10k
    fedjaxscale --config=experiments/configs/compression.py:topk=10000,ef --workdir=runs/top10k_ef  # error feedback
    fedjaxscale --config=experiments/configs/compression.py:small,bits=2 --workdir=/tmp/fjs/q2   # seconds

Variants (comma-separated): ``bits=<1..32>`` (default 8), ``norotate``, ``topk=<k>``, ``ef``
(error feedback: each client's residual kept in the client-state store), ``rounds=<n>``, ``small``.
"""

from fedjaxscale.training.defaults import get_base


def get_config(arg: str | None = None):
  c = get_base()
  c.rounds = 60
  c.data.num_clients = 1000
  c.data.iid = True  # Synthetic-IID (as the demo): one model fits every client, so 60 rounds can rank the widths
  c.data.max_size = 200  # local work of at most 20 steps, so the upload is a large share of a round
  c.clients_per_round = 20
  c.model.name = "mlp"
  c.model.hidden = (512, 512)
  c.algorithm.client_lr = 0.03
  c.local.batch_size = 10
  c.local.local_epochs = 1.0
  c.system.traces = "traces/synthetic_10k.npz"
  c.compression.encoder = "quantize"
  c.compression.bits = 8
  c.compression.rotate = True
  c.eval_every = 5
  for part in (arg or "").split(","):
    key, _, value = part.partition("=")
    if not part:
      continue
    if key == "bits":
      c.compression.bits = int(value)
    elif key == "norotate":
      c.compression.rotate = False
    elif key == "topk":
      c.compression.encoder = "topk"
      c.compression.topk = int(value)
    elif key == "ef":
      c.compression.error_feedback = True
    elif key == "rounds":
      c.rounds = int(value)
    elif key == "small":  # for laptops and tests
      c.rounds = 3
      c.data.num_clients = 200
      c.data.max_size = 100
      c.clients_per_round = 4
      c.model.hidden = (32,)
      c.eval_every = 3
      c.checkpoint_every = 2
    else:
      raise ValueError(
        f"unknown variant {part!r} of compression.py; expected bits=, norotate, topk=, ef, rounds= or small"
      )
  return c
