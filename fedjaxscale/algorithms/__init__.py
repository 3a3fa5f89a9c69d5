"""Federated algorithms as pure functions: each factory returns ``Algorithm(init, apply)``.

Example::

  from fedjaxscale import algorithms, models
  model = models.logistic_regression(60, 10)
  alg = algorithms.fedavg(model, optax.sgd(0.1))
  state = alg.init(model.init(jax.random.key(0)))
  state, diagnostics = alg.apply(state, cohort, jax.random.key(1))
"""

from fedjaxscale.algorithms.base import Algorithm, ServerState, Shared, build_algorithm
from fedjaxscale.algorithms.dp import AdaptiveClipping, private_aggregation
from fedjaxscale.algorithms.encoders import UpdateEncoder
from fedjaxscale.algorithms.fedadagrad import fedadagrad
from fedjaxscale.algorithms.fedadam import fedadam
from fedjaxscale.algorithms.fedavg import fedavg, local_training
from fedjaxscale.algorithms.fedopt import fedopt, fedopt_server, scale_by_fedopt
from fedjaxscale.algorithms.fedprox import fedprox
from fedjaxscale.algorithms.fedyogi import fedyogi

__all__ = [
  "AdaptiveClipping",
  "Algorithm",
  "ServerState",
  "Shared",
  "UpdateEncoder",
  "build_algorithm",
  "fedadagrad",
  "fedadam",
  "fedavg",
  "fedopt",
  "fedopt_server",
  "fedprox",
  "fedyogi",
  "local_training",
  "private_aggregation",
  "scale_by_fedopt",
]
