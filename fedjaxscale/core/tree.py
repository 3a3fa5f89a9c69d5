"""Small pytree helpers the algorithms and the engine share."""

import jax
import jax.numpy as jnp

from fedjaxscale.core.types import PyTree


def tree_zeros_like(tree: PyTree) -> PyTree:
  return jax.tree.map(jnp.zeros_like, tree)


def tree_add(a: PyTree, b: PyTree) -> PyTree:
  return jax.tree.map(jnp.add, a, b)


def tree_sub(a: PyTree, b: PyTree) -> PyTree:
  return jax.tree.map(jnp.subtract, a, b)


def tree_where(pred: jax.Array, on_true: PyTree, on_false: PyTree) -> PyTree:
  """Selects whole trees by a scalar predicate (traceable; both sides are computed)."""
  return jax.tree.map(lambda x, y: jnp.where(pred, x, y), on_true, on_false)


def tree_all_finite(tree: PyTree) -> jax.Array:
  """True when every element of every leaf is finite."""
  leaves = [jnp.all(jnp.isfinite(x)) for x in jax.tree.leaves(tree)]
  return jnp.all(jnp.stack(leaves)) if leaves else jnp.array(True)


def tree_sq_norm(tree: PyTree) -> jax.Array:
  return sum(jnp.vdot(x, x).real for x in jax.tree.leaves(tree))


def tree_size_bytes(tree: PyTree) -> int:
  """Bytes the tree's leaves occupy (works on arrays and ShapeDtypeStructs)."""
  return sum(int(x.size) * jnp.dtype(x.dtype).itemsize for x in jax.tree.leaves(tree))


def tree_num_params(tree: PyTree) -> int:
  return sum(int(x.size) for x in jax.tree.leaves(tree))
