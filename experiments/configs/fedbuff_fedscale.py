"""FedBuff as FedScale runs it, side by side with `fedbuff.py` (experiments/README.md).

The same experiment as `fedbuff.py` (Synthetic(1, 1), K = 10 updates per server step, 30 clients
in flight, staleness bound 5, weights 1/sqrt(1 + s)) with FedScale's two differences (Lai et al.,
"FedScale", ICML 2022, its async aggregator):

* availability is checked when a client starts only (`system.availability_mode = 'start'`):
  a client that goes offline before it finishes still reports;
* the server averages the buffered client *models* (`system.async_aggregation = 'models'`), so an
  update trained from an older model pulls the server back towards that model, where FedBuff adds
  the buffered *deltas* to the current model.

    fedjaxscale --config=experiments/configs/fedbuff_fedscale.py --workdir=/tmp/fjs/fedbuff_fedscale
    fedjaxscale --config=experiments/configs/fedbuff_fedscale.py:small --workdir=/tmp/fjs/fedbuff_fedscale_small
"""

import importlib.util
import pathlib


def _fedbuff():
  spec = importlib.util.spec_from_file_location("fedbuff", pathlib.Path(__file__).with_name("fedbuff.py"))
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module


def get_config(arg: str | None = None):
  if arg not in (None, "", "small"):
    raise ValueError(f"unknown variant {arg!r} of fedbuff_fedscale.py; expected 'small' or nothing")
  c = _fedbuff().get_config(arg or None)
  c.system.availability_mode = "start"  # FedScale checks availability at the start only
  c.system.async_aggregation = "models"  # FedScale averages client models
  return c
