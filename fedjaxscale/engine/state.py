"""The engine's client-state path: per-client state in, new per-client state out.

A ``StatefulProgram`` is a ``ClientProgram`` whose clients carry a state pytree between rounds
(SCAFFOLD's control variate, Ditto's personal model, a client optimizer's moments). Its shape and
dtype are declared by ``state_init(shared)``, which is also the state of a client never selected
before. ``init`` receives the client's stored state, ``finish`` returns the new one next to the
``ClientOutput``.

``run_stateful(engine, program, shared, cohort, rng, states, fresh)`` runs the cohort like
``Engine.run`` and gathers the cohort's states onto the devices with it:

* one client per lane: lane ``l`` gets its client's state as ``state[l]``;
* packed lanes: lane ``l`` holds the states of all its clients, ``state[l, j]`` for its j-th
  client; a client's state is loaded at its first step and its new state written at its last.

Each process reads only the stored states of the clients on its own devices (``local_clients``)
and the new states come back sharded over the ``clients`` axis (each process fetches only its own
devices' lanes) next to the aggregate, which is reduced on the devices as before. A client whose
update, weight or new state is not finite keeps its old state (``written`` is False for it).
"""

import functools
from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from fedjaxscale.core.cohort import Cohort
from fedjaxscale.core.types import PRNGKey, PyTree
from fedjaxscale.engine.executor import Engine
from fedjaxscale.engine.lanes import per_client
from fedjaxscale.engine.per_client import run_clients
from fedjaxscale.engine.program import Aggregate, ClientOutput, accumulate, client_key
from fedjaxscale.engine.state_compiled import LOCK, finish_client, initial_carry, local_clients, program_cache, run_vmap


class StatefulProgram(NamedTuple):
  """A client's local work with a state kept between rounds.

  Attributes:
    init: ``(shared, rng, state) -> carry``; ``state`` is the client's stored state.
    step: ``(shared, carry, batch, mask, rng) -> carry`` (as ``ClientProgram.step``).
    finish: ``(shared, carry, num_examples) -> (ClientOutput, new_state)``.
    state_init: ``shared -> state``; declares the state's shape and dtype and is the state of a
      client never selected before.
  """

  init: Callable[[Any, PRNGKey, PyTree], PyTree]
  step: Callable[..., PyTree]
  finish: Callable[[Any, PyTree, jax.Array], tuple[ClientOutput, PyTree]]
  state_init: Callable[[Any], PyTree]


class StateError(ValueError):
  """A state that does not match the program's declared shape or dtype."""


def state_spec(program: StatefulProgram, shared) -> PyTree:
  """The declared per-client state: a pytree of ``jax.ShapeDtypeStruct``."""
  return jax.eval_shape(program.state_init, shared)


def check_states(spec: PyTree, states: PyTree, num_clients: int, what: str = "client states") -> None:
  """Raises ``StateError`` naming the first leaf whose structure, shape or dtype differs from ``spec``."""
  want_leaves, want_def = jax.tree_util.tree_flatten_with_path(spec)
  got_leaves, got_def = jax.tree_util.tree_flatten_with_path(states)
  if want_def != got_def:
    raise StateError(f"{what}: structure {got_def} does not match the program's declared state {want_def}")
  for (path, want), (_, got) in zip(want_leaves, got_leaves):
    name = jax.tree_util.keystr(path) or "<root>"
    shape = (num_clients,) + tuple(want.shape)
    if tuple(np.shape(got)) != shape or np.dtype(got.dtype) != np.dtype(want.dtype):
      raise StateError(
        f"{what}: leaf {name} is {np.dtype(got.dtype).name}{list(np.shape(got))}; the program declares "
        f"{np.dtype(want.dtype).name}{list(shape)} (clients x {list(want.shape)})"
      )


def _contribution(program, shared, batch, mask, n, multiplier, key, stored, fresh):
  state, carry = initial_carry(program, shared, key, stored, fresh)

  def body(carry, xs):
    b, m, s = xs
    return program.step(shared, carry, b, m, jax.random.fold_in(key, s)), None

  carry, _ = jax.lax.scan(body, carry, (batch, mask, jnp.arange(mask.shape[0], dtype=jnp.int32)))
  out, weighted, w, nonfinite, new_state, written = finish_client(program, shared, carry, n, multiplier, True, state)
  return weighted, w, nonfinite, out.metrics, new_state, written


def _run_per_client(engine, program, shared, cohort, rng, states, fresh, new_states, written, use_jit):
  if use_jit:
    key = ("state-loop", program)
    cache = program_cache(engine)
    with LOCK:
      if key not in cache:
        cache[key] = (jax.jit(functools.partial(_contribution, program)), jax.jit(accumulate, donate_argnums=(0,)))
      contribution, add = cache[key]
  else:
    contribution, add = functools.partial(_contribution, program), accumulate

  def one(k, batch, mask):
    stored = jax.tree.map(lambda x: np.asarray(x)[k], states)
    weighted, w, nf, m, new_state, wrote = contribution(
      shared, batch, mask, cohort.num_examples[k], cohort.weights[k], client_key(rng, k), stored, fresh[k]
    )
    if bool(wrote):
      written[k] = True
      for target, value in zip(jax.tree.leaves(new_states), jax.tree.leaves(jax.device_get(new_state))):
        target[k] = value
    return weighted, w, nf, m

  with jax.disable_jit(not use_jit):
    return run_clients(cohort, one, add, engine.stats, tag_errors=not use_jit)


class StatefulResult(NamedTuple):
  """What ``run_stateful`` returns.

  Attributes:
    aggregate: the weighted sums on device (as ``Engine.run``).
    per_client: per-client metrics in cohort order, plus ``'nonfinite'``.
    states: the cohort's new states, host arrays ``[clients, ...]`` in cohort order (a client
      not written keeps the state it came with).
    written: bool ``[clients]``; True where the client's new state is valid and should be stored
      (False for clients left out as non-finite, and, in multi-process runs, for clients on
      another process's devices).
  """

  aggregate: Aggregate
  per_client: dict[str, np.ndarray]
  states: PyTree
  written: np.ndarray


def run_stateful(
  engine: Engine,
  program: StatefulProgram,
  shared: PyTree,
  cohort: Cohort,
  rng: PRNGKey,
  states: PyTree,
  fresh: np.ndarray,
) -> StatefulResult:
  """Runs a stateful program over ``cohort`` on ``engine``'s backend.

  Args:
    engine: the engine (any backend); compiled programs are cached on it.
    program: the clients' local work with state.
    shared: what every client receives.
    cohort: the round's cohort.
    rng: the round's key (client k gets ``fold_in(rng, k)``, as in ``Engine.run``).
    states: host arrays ``[clients, ...]`` in cohort order, matching ``state_spec(program, shared)``
      (rows of fresh clients are ignored, and so are those of clients on other processes' devices:
      see ``local_clients``).
    fresh: bool ``[clients]``; True for a client with no stored state (it starts from
      ``program.state_init(shared)``).

  Returns:
    ``StatefulResult(aggregate, per_client, states, written)``.
  """
  if cohort.num_clients == 0:
    raise ValueError("the cohort has no clients")
  check_states(state_spec(program, shared), states, cohort.num_clients)
  fresh = np.asarray(fresh, bool)
  if fresh.shape != (cohort.num_clients,):
    raise StateError(f"fresh must be bool [{cohort.num_clients}], got shape {fresh.shape}")
  new_states = jax.tree.map(lambda x: np.array(x, copy=True), states)
  written = np.zeros(cohort.num_clients, bool)
  if engine.backend == "vmap":
    aggregate, results = run_vmap(engine, program, shared, cohort, rng, states, fresh, new_states, written)
  else:
    use_jit = engine.backend == "loop"
    aggregate, results = _run_per_client(
      engine, program, shared, cohort, rng, states, fresh, new_states, written, use_jit
    )
  engine.stats.real_example_steps += cohort.real_example_steps
  return StatefulResult(aggregate, per_client(cohort, results), new_states, written)


def stack_states(spec: PyTree, num_clients: int) -> PyTree:
  """Zeros ``[num_clients, ...]`` shaped like ``spec`` (the host buffer of an all-fresh cohort)."""
  return jax.tree.map(lambda s: np.zeros((num_clients,) + tuple(s.shape), s.dtype), spec)


__all__ = [
  "StateError",
  "StatefulProgram",
  "StatefulResult",
  "check_states",
  "local_clients",
  "run_stateful",
  "stack_states",
  "state_spec",
]
