"""FedAdagrad: federated averaging's clients with an adaptive Adagrad server.

Adaptive Federated Optimization. Sashank J. Reddi et al. ICLR 2021. arXiv:2003.00295 (Algorithm 2).

    m = b1 m + (1 - b1) Delta;  v = v + Delta^2  (beta2 is unused);  x = x + eta m / (sqrt(v) + tau)

with m starting at 0, v at tau^2 and no bias correction (see ``fedopt`` for why optax's own
optimizer is not used).
"""

import optax

from fedjaxscale.algorithms.base import Algorithm
from fedjaxscale.algorithms.fedopt import fedopt
from fedjaxscale.models.model import Model


def fedadagrad(
  model: Model,
  client_optimizer: optax.GradientTransformation,
  server_lr: float = 1e-2,
  beta1: float = 0.9,
  beta2: float = 0.99,
  tau: float = 1e-3,
  **kwargs,
) -> Algorithm:
  """FedAdagrad (Reddi et al. 2021).

  Args:
    model: the model trained.
    client_optimizer: e.g. ``optax.sgd(0.05)``.
    server_lr: eta.
    beta1: momentum decay.
    beta2: second-moment decay.
    tau: adaptivity (and sqrt of the initial v).
    **kwargs: ``initial_v``, ``weighting``, ``client_lr_schedule``, ``engine``, as ``fedopt``.

  Returns:
    ``Algorithm(init, apply, ...)``.
  """
  return fedopt(model, client_optimizer, "adagrad", server_lr, beta1, beta2, tau, **kwargs)
