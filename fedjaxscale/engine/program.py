"""A client's local work (``ClientProgram``), what it produces, and how one client is weighed.

Client k gets the key ``fold_in(rng, k)`` and its local step s the key
``fold_in(fold_in(rng, k), s)``, so results do not depend on padding, packing, chunking, the
execution strategy or the backend.
"""

from collections.abc import Callable, Mapping
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp

from fedjaxscale.core.tree import tree_all_finite, tree_zeros_like
from fedjaxscale.core.types import PRNGKey, PyTree


class ClientOutput(NamedTuple):
  """What a client's local work produces.

  Attributes:
    update: the pytree to aggregate (e.g. the model delta).
    weight: float32 scalar aggregation weight (e.g. ``num_examples``, or 1 for uniform).
    metrics: name -> float32 scalar, returned to the host per client (e.g. training loss).
  """

  update: PyTree
  weight: jax.Array
  metrics: Mapping[str, jax.Array]


class ClientProgram(NamedTuple):
  """A client's local work as three pure, jittable functions.

  Attributes:
    init: ``(shared, rng) -> carry``; the client's state before its first step.
    step: ``(shared, carry, batch, mask, rng) -> carry``; one local step on one batch
      (``batch`` has a leading example axis, ``mask`` marks real examples; a step whose mask is
      all False must leave the carry as it was).
    finish: ``(shared, carry, num_examples) -> ClientOutput``.
  """

  init: Callable[[Any, PRNGKey], PyTree]
  step: Callable[[Any, PyTree, Mapping[str, jax.Array], jax.Array, PRNGKey], PyTree]
  finish: Callable[[Any, PyTree, jax.Array], ClientOutput]


class Aggregate(NamedTuple):
  """Weighted sums over the cohort's finite clients (device arrays)."""

  update_sum: PyTree
  weight_sum: jax.Array
  num_nonfinite: jax.Array


class ClientError(RuntimeError):
  """Raised by the ``debug`` backend: names the client whose update failed."""


def run_client(program: ClientProgram, shared, batch, mask, num_examples, rng, unroll: int | bool = 1) -> ClientOutput:
  """One client's whole local work: ``init``, a ``scan`` of ``step`` over its steps, ``finish``."""

  def body(carry, xs):
    b, m, s = xs
    return program.step(shared, carry, b, m, jax.random.fold_in(rng, s)), None

  steps = jnp.arange(mask.shape[0], dtype=jnp.int32)
  carry, _ = jax.lax.scan(body, program.init(shared, rng), (batch, mask, steps), unroll=unroll)
  return program.finish(shared, carry, num_examples)


def weigh(out: ClientOutput, multiplier, real):
  """One client's contribution: (w * u, w, nonfinite) with non-finite clients zeroed."""
  w = out.weight.astype(jnp.float32) * multiplier
  finite = tree_all_finite(out.update) & jnp.isfinite(w)
  w = jnp.where(finite, w, 0.0)
  weighted = jax.tree.map(lambda u: jnp.where(finite, u * w.astype(u.dtype), jnp.zeros_like(u)), out.update)
  return weighted, w, real & ~finite


def accumulate(acc: Aggregate, contrib: Aggregate) -> Aggregate:
  return jax.tree.map(jnp.add, acc, contrib)


def when(pred, fn: Callable, *args):
  """``fn(*args)`` if ``pred``, else zeros shaped like it.

  A packed lane finishes a client (clips, encodes and weighs its update) at that client's last
  step only: a real branch where lanes run one at a time (``lax.map``), a select under ``vmap``
  (which computes both, as an unconditional finish did). ``fn``'s result at a step where
  ``pred`` is False must never be needed.
  """
  shapes = jax.eval_shape(fn, *args)
  return jax.lax.cond(pred, fn, lambda *a: tree_zeros_like(shapes), *args)


def client_key(rng, owner):
  return jax.random.fold_in(rng, jnp.maximum(owner, 0))


def zero_aggregate(program: ClientProgram, shared, rng) -> Aggregate:
  """Zeros shaped like the clients' update (traces ``program`` once, abstractly)."""
  carry = program.init(shared, rng)
  out = program.finish(shared, carry, jnp.zeros((), jnp.float32))
  return Aggregate(jax.tree.map(jnp.zeros_like, out.update), jnp.zeros((), jnp.float32), jnp.zeros((), jnp.int32))


def contribution(program: ClientProgram, shared, batch, mask, num_examples, multiplier, key, unroll: int | bool = 1):
  """One client's local work, weighted: ``(w * u, w, nonfinite, metrics)``."""
  out = run_client(program, shared, batch, mask, num_examples, key, unroll)
  weighted, w, nonfinite = weigh(out, multiplier, True)
  return weighted, w, nonfinite, out.metrics
