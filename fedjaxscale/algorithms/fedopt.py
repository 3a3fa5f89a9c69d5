"""Adaptive server optimizers: the FedOpt family (FedAdagrad, FedAdam, FedYogi).

Adaptive Federated Optimization. Sashank J. Reddi, Zachary Charles, Manzil Zaheer, Zachary Garrett,
Keith Rush, Jakub Konečný, Sanjiv Kumar, H. Brendan McMahan. ICLR 2021. arXiv:2003.00295.

Algorithm 2 of the paper, with Delta_t the weighted mean client delta (x_k - x):

    m_t = b1 m_{t-1} + (1 - b1) Delta_t                          (m_0 = 0)
    v_t = v_{t-1} + Delta_t^2                                    FedAdagrad
    v_t = b2 v_{t-1} + (1 - b2) Delta_t^2                        FedAdam
    v_t = v_{t-1} - (1 - b2) Delta_t^2 sign(v_{t-1} - Delta_t^2)  FedYogi   (v_0 = tau^2)
    x_{t+1} = x_t + eta m_t / (sqrt(v_t) + tau)

Why not ``optax.adam``/``optax.yogi``/``optax.adagrad``: optax bias-corrects m and v (the paper
does not), its yogi starts m and v at ``initial_accumulator_value`` (the paper starts m at 0 and
v at tau^2), and its adagrad places eps inside the square root. So the rule is implemented
here, as an optax ``GradientTransformation`` composed with ``optax.scale`` in the usual way.
"""

from collections.abc import Callable
from typing import NamedTuple

import jax
import jax.numpy as jnp
import optax

from fedjaxscale.algorithms.base import Algorithm, build_algorithm
from fedjaxscale.algorithms.fedavg import local_training
from fedjaxscale.engine.executor import Engine
from fedjaxscale.models.model import Model

RULES = ("adagrad", "adam", "yogi")


class ScaleByFedOptState(NamedTuple):
  m: optax.Updates
  v: optax.Updates


def scale_by_fedopt(
  rule: str, b1: float = 0.9, b2: float = 0.99, tau: float = 1e-3, initial_v: float | None = None
) -> optax.GradientTransformation:
  """Reddi et al.'s adaptive scaling: ``g -> m / (sqrt(v) + tau)`` with the paper's moments.

  Args:
    rule: ``'adagrad'``, ``'adam'`` or ``'yogi'``.
    b1: momentum decay (the paper's beta_1).
    b2: second-moment decay (beta_2; unused by adagrad).
    tau: adaptivity; also the default ``sqrt(v_0)``.
    initial_v: ``v_0``; default ``tau ** 2`` as the paper (FedScale starts its Yogi at ``tau``).

  Returns:
    An optax transformation; chain it with ``optax.scale(-eta)``.
  """
  if rule not in RULES:
    raise ValueError(f"unknown FedOpt rule {rule!r}; expected one of {RULES}")
  v0 = tau**2 if initial_v is None else initial_v

  def init_fn(params):
    return ScaleByFedOptState(
      m=jax.tree.map(jnp.zeros_like, params), v=jax.tree.map(lambda p: jnp.full_like(p, v0), params)
    )

  def update_fn(updates, state, params=None):
    del params
    m = jax.tree.map(lambda m, g: b1 * m + (1 - b1) * g, state.m, updates)
    if rule == "adagrad":
      v = jax.tree.map(lambda v, g: v + g * g, state.v, updates)
    elif rule == "adam":
      v = jax.tree.map(lambda v, g: b2 * v + (1 - b2) * g * g, state.v, updates)
    else:
      v = jax.tree.map(lambda v, g: v - (1 - b2) * g * g * jnp.sign(v - g * g), state.v, updates)
    out = jax.tree.map(lambda m, v: m / (jnp.sqrt(v) + tau), m, v)
    return out, ScaleByFedOptState(m, v)

  return optax.GradientTransformation(init_fn, update_fn)


def fedopt_server(
  rule: str, server_lr: float, b1: float = 0.9, b2: float = 0.99, tau: float = 1e-3, initial_v: float | None = None
) -> optax.GradientTransformation:
  """The server optimizer of Reddi et al.'s Algorithm 2.

  The algorithms hand the server ``x - mean x_k = -Delta`` as the gradient, so the step
  ``-eta * m(-Delta) / (sqrt(v) + tau)`` is the paper's ``+eta * m(Delta) / (sqrt(v) + tau)``
  (v depends on Delta^2 only).
  """
  return optax.chain(scale_by_fedopt(rule, b1, b2, tau, initial_v), optax.scale(-server_lr))


def fedopt(
  model: Model,
  client_optimizer: optax.GradientTransformation,
  rule: str,
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
  """FedAvg's clients with Reddi et al.'s adaptive server rule ``rule`` (``fedyogi`` and co. call this).

  Args:
    model: the model trained.
    client_optimizer: e.g. ``optax.sgd(0.05)``.
    rule: ``'adagrad'``, ``'adam'`` or ``'yogi'``.
    server_lr: eta.
    beta1: momentum decay.
    beta2: second-moment decay (unused by adagrad).
    tau: adaptivity (and sqrt of the initial v).
    initial_v: v_0, default tau^2 (FedScale starts its Yogi at tau).
    weighting: ``'num_examples'`` or ``'uniform'`` mean of the client deltas.
    client_lr_schedule: optional ``round -> multiplier`` of the client's steps.
    engine: where cohorts run.

  Returns:
    ``Algorithm(init, apply, ...)``.
  """
  program = local_training(model, client_optimizer, weighting=weighting, client_lr_schedule=client_lr_schedule)
  return build_algorithm(program, fedopt_server(rule, server_lr, beta1, beta2, tau, initial_v), engine)
