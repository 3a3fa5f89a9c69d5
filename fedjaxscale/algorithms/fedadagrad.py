"""FedAdagrad: federated averaging's clients with an adaptive Adagrad server.

Adaptive Federated Optimization. Sashank J. Reddi et al. ICLR 2021. arXiv:2003.00295 (Algorithm 2).

    m = b1 m + (1 - b1) Delta;  v = v + Delta^2  (beta2 is unused);  x = x + eta m / (sqrt(v) + tau)

with m starting at 0, v at tau^2 and no bias correction (see ``fedopt`` for why optax's own
optimizer is not used).
"""

from typing import Callable

import jax
import optax

from fedjaxscale.algorithms.base import Algorithm
from fedjaxscale.algorithms.fedopt import fedopt
from fedjaxscale.engine.executor import Engine
from fedjaxscale.models.model import Model


def fedadagrad(
    model: Model,
    client_optimizer: optax.GradientTransformation,
    server_lr: float = 1e-2,
    beta1: float = 0.9,
    beta2: float = 0.99,
    tau: float = 1e-3,
    *,
    initial_v: float | None = None,
    weighting: str = "num_examples",
    client_lr_schedule: Callable[[jax.Array], jax.Array] | None = None,
    engine: Engine | None = None,
) -> Algorithm:
  """FedAdagrad (Reddi et al. 2021).

  Args:
    model: the model trained.
    client_optimizer: e.g. ``optax.sgd(0.05)``.
    server_lr: eta.
    beta1: momentum decay.
    beta2: second-moment decay.
    tau: adaptivity (and sqrt of the initial v).
    initial_v: v_0, default tau^2.
    weighting: ``'num_examples'`` or ``'uniform'`` mean of the client deltas.
    client_lr_schedule: optional ``round -> multiplier`` of the client's steps.
    engine: where cohorts run.

  Returns:
    ``Algorithm(init, apply, ...)``.
  """
  return fedopt(model, client_optimizer, "adagrad", server_lr, beta1, beta2, tau, initial_v=initial_v,
                weighting=weighting, client_lr_schedule=client_lr_schedule, engine=engine)
