"""Where arrays live: the ``clients`` mesh, the engine's deliberate host-to-device transfers, and
the memory budget."""

import contextlib
import functools
import os
from collections.abc import Mapping
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

from fedjaxscale.core.cohort import take_rows
from fedjaxscale.core.types import PyTree

CLIENTS = "clients"


def default_mesh() -> jax.sharding.Mesh:
  """A 1-D ``clients`` mesh over every (global) device."""
  return jax.make_mesh((jax.device_count(),), (CLIENTS,), axis_types=(jax.sharding.AxisType.Explicit,))


def default_memory_budget() -> int:
  """Half the accelerator's memory, or a quarter of host RAM on CPU."""
  stats = jax.local_devices()[0].memory_stats() or {}
  if "bytes_limit" in stats:
    return int(stats["bytes_limit"] * 0.5)
  return int(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") * 0.25)


_GUARDS = (
  "jax_transfer_guard_host_to_device",
  "jax_transfer_guard_device_to_host",
  "jax_transfer_guard_device_to_device",
)


def allow_transfers():
  """``jax.transfer_guard("allow")`` for the engine's deliberate transfers, or no context at all
  where no guard is set (the default, which allows them already): entering the guard's context
  costs about 10 us, paid every round."""
  if all(getattr(jax.config, name) is None for name in _GUARDS):
    return contextlib.nullcontext()
  return jax.transfer_guard("allow")


def put_host(x, sharding: jax.sharding.Sharding):
  """Places a host array (or a pytree of them, in one batched transfer) that every process holds
  whole; each process copies its own shards.

  This and ``put_rows`` are the engine's deliberate transfers, so they are allowed under a
  ``jax.transfer_guard('disallow')`` that catches implicit ones elsewhere.
  """
  x = jax.tree.map(np.asarray, x)
  with jax.transfer_guard_host_to_device("allow"):
    if jax.process_count() == 1:  # one batched transfer beats a callback per device
      return jax.device_put(x, sharding)
    return jax.tree.map(lambda a: jax.make_array_from_callback(a.shape, sharding, lambda index: a[index]), x)


def place_replicated(tree: PyTree, mesh: jax.sharding.Mesh) -> PyTree:
  """Puts ``tree`` on every device of ``mesh``.

  Leaves already replicated over the mesh stay where they are; others go through the host, so
  this works in multi-process runs too (every process must pass the same values).
  """
  sharding = NamedSharding(mesh, P())

  def place(x):
    if isinstance(x, jax.Array) and x.sharding.is_equivalent_to(sharding, x.ndim):
      # Equivalent is not enough for jit's cache: an uncommitted single-device array (a fresh
      # ``jnp.zeros``) and the committed mesh-replicated outputs of a jitted server update key
      # different programs, so round 2 would compile the server update again. Commit it.
      if x.committed and isinstance(x.sharding, NamedSharding):
        return x
      if jax.process_count() == 1:
        return jax.device_put(x, sharding)
    if isinstance(x, jax.Array) and jnp.issubdtype(x.dtype, jax.dtypes.prng_key):
      data = put_host(np.asarray(jax.random.key_data(x)), sharding)
      return jax.random.wrap_key_data(data, impl=jax.random.key_impl(x))
    return put_host(np.asarray(x), sharding)

  return jax.tree.map(place, tree)


def replicated_arguments(tree: PyTree, mesh: jax.sharding.Mesh) -> PyTree:
  """``tree`` as arguments of a compiled program that takes it replicated over ``mesh``.

  In one process, arrays not committed elsewhere pass as they are: the compiled call copies an
  uncommitted array (a fresh ``jax.random.key``) to every device itself, ten times cheaper than
  ``device_put`` first. Call the program under ``jax.transfer_guard("allow")``. Other leaves,
  and every leaf in a multi-process run, go through ``place_replicated``.
  """
  if jax.process_count() > 1:
    return place_replicated(tree, mesh)
  sharding = replicated_sharding(mesh)

  def argument(x):
    if isinstance(x, jax.Array) and (not x.committed or _equivalent(x.sharding, sharding, x.ndim)):
      return x
    return place_replicated(x, mesh)

  return jax.tree.map(argument, tree)


@functools.lru_cache(maxsize=256)
def _equivalent(a: jax.sharding.Sharding, b: jax.sharding.Sharding, ndim: int) -> bool:
  """``a.is_equivalent_to(b, ndim)``, remembered: every round passes arrays of the same few
  shardings, and the test costs more than a round's other argument handling."""
  return a.is_equivalent_to(b, ndim)


@functools.lru_cache(maxsize=16)
def replicated_sharding(mesh: jax.sharding.Mesh) -> NamedSharding:
  """``NamedSharding(mesh, P())``, made once per mesh."""
  return NamedSharding(mesh, P())


def put_rows(features: Mapping[str, np.ndarray], rows: np.ndarray, sharding: jax.sharding.Sharding) -> dict:
  """Places ``features[rows]`` sharded over the leading axis, reading only this process's rows."""

  def put(x):
    def shard(index):
      r = rows[index[0]]
      return np.asarray(x[r.reshape(-1)]).reshape(r.shape + x.shape[1:])

    return jax.make_array_from_callback(rows.shape + x.shape[1:], sharding, shard)

  with jax.transfer_guard_host_to_device("allow"):
    if jax.process_count() == 1:
      return jax.device_put(take_rows(features, rows), sharding)
    return {name: put(x) for name, x in features.items()}


class Resident(NamedTuple):
  """Feature arrays kept on the devices (replicated), and the host arrays they were made from
  (``Engine.make_resident``)."""

  arrays: dict
  host: dict

  def items(self):
    return self.host.items()


def feature_identity(features) -> tuple:
  """Which arrays a feature mapping holds (by identity): the key of its resident copy."""
  return tuple(sorted((k, id(x)) for k, x in features.items()))


def feature_specs(features) -> tuple:
  """Each feature's name, per-example shape and dtype: what gathered examples' programs depend on."""
  return tuple((k, x.shape[1:], x.dtype) for k, x in sorted(features.items()))


def replicated_specs(tree: PyTree, mesh: jax.sharding.Mesh) -> PyTree:
  """``tree``'s leaves as ``ShapeDtypeStruct``s replicated over ``mesh`` (weak types kept): what a
  program is compiled for, whether or not the arrays are placed yet (``replicated_arguments``)."""
  replicated = replicated_sharding(mesh)
  return jax.tree.map(
    lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=replicated, weak_type=getattr(x, "weak_type", False)),
    tree,
  )
