"""FedProx: FedAvg with a proximal term in the client objective.

Federated Optimization in Heterogeneous Networks. Tian Li, Anit Kumar Sahu, Manzil Zaheer,
Maziar Sanjabi, Ameet Talwalkar, Virginia Smith. MLSys 2020. arXiv:1812.06127.

Client k minimises h_k(w) = F_k(w) + mu/2 ||w - x||^2 from w = x, so its gradient steps are pulled
back toward the global model x. The paper's second ingredient, keeping the partial work of
stragglers rather than dropping them, is a property of the round (the scheduler gives stragglers
fewer steps; the cohort's step mask expresses it), not of this update.
"""

from collections.abc import Callable

import jax
import optax

from fedjaxscale.algorithms.base import Algorithm, build_algorithm
from fedjaxscale.algorithms.fedavg import local_training
from fedjaxscale.engine.executor import Engine
from fedjaxscale.models.model import Model


def fedprox(
  model: Model,
  client_optimizer: optax.GradientTransformation,
  server_optimizer: optax.GradientTransformation | None = None,
  mu: float = 0.1,
  *,
  weighting: str = "num_examples",
  client_lr_schedule: Callable[[jax.Array], jax.Array] | None = None,
  engine: Engine | None = None,
) -> Algorithm:
  """FedProx (Li et al. 2020): FedAvg whose clients add ``mu/2 ||w - x||^2`` to their loss.

  Args:
    model: the model trained.
    client_optimizer: e.g. ``optax.sgd(0.01)``.
    server_optimizer: default ``optax.sgd(1.0)`` (averaging, as the paper).
    mu: the proximal coefficient (FedScale's default 0.1); ``mu=0`` is FedAvg.
    weighting: ``'num_examples'`` or ``'uniform'``.
    client_lr_schedule: optional ``round -> multiplier`` of the client's steps.
    engine: where cohorts run.

  Returns:
    ``Algorithm(init, apply, ...)``.
  """
  program = local_training(
    model, client_optimizer, proximal_mu=mu, weighting=weighting, client_lr_schedule=client_lr_schedule
  )
  return build_algorithm(program, server_optimizer or optax.sgd(1.0), engine)
