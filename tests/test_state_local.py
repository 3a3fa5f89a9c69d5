"""Each process reads only the stored states of the clients its own devices run (``local_clients``).

A single process stands in for two: half of the four forced devices play "this process". The
clients ``local_clients`` names for one half must be exactly those whose results that half
computes: with every other client's stored state poisoned (NaN), the half's clients still get
exactly the new states of a clean run.
"""

import jax
import numpy as np
import pytest

from fedjaxscale import models
from fedjaxscale.algorithms.scaffold import scaffold
from fedjaxscale.data import make_cohort
from fedjaxscale.engine import Engine
from fedjaxscale.engine.state import local_clients

FEATURES, CLASSES, BATCH, CLIENTS = 3, 2, 2, 10


def clients():
  rng = np.random.default_rng(1)
  return [
    {"x": rng.normal(size=(n, FEATURES)).astype(np.float32), "y": rng.integers(0, CLASSES, n).astype(np.int32)}
    for n in rng.integers(2, 7, CLIENTS)
  ]


@pytest.mark.parametrize("pack", [False, True], ids=["one client per lane", "packed"])
def test_a_process_needs_only_its_own_devices_clients_states(pack):
  engine = Engine("vmap", max_clients_per_chunk=4)  # several chunks: each is placed on its own
  model = models.logistic_regression(FEATURES, CLASSES)
  alg = scaffold(model, 0.3, 0.7, num_clients=CLIENTS, engine=engine)
  server = alg.init(model.init(jax.random.key(0)))
  cohort = make_cohort(clients(), BATCH, local_epochs=1, shuffle=False, pack=pack, lane_multiple=4)
  assert cohort.parts[0].packed == pack
  blank = jax.tree.map(lambda s: np.zeros((CLIENTS,) + s.shape, s.dtype), alg.state_spec(server))
  server, _, first = alg.apply(server, cohort, jax.random.key(0), blank, np.ones(CLIENTS, bool))
  stored, fresh = first.states, ~first.written  # every client has a (non-zero) state now
  assert first.written.all() and np.abs(jax.tree.leaves(stored)[0]).max() > 0
  _, _, clean = alg.apply(server, cohort, jax.random.key(1), stored, fresh)

  devices = list(engine.mesh.devices.flat)
  halves = [local_clients(engine, cohort, devices[:2]), local_clients(engine, cohort, devices[2:])]
  assert not (halves[0] & halves[1]).any() and (halves[0] | halves[1]).all()
  assert all(h.any() for h in halves)
  assert local_clients(engine, cohort).all()  # one process: all of them
  for mine in halves:
    poisoned = jax.tree.map(lambda x, mine=mine: np.where(mine.reshape((-1,) + (1,) * (x.ndim - 1)), x, np.nan), stored)
    _, _, new = alg.apply(server, cohort, jax.random.key(1), poisoned, fresh)
    # The poison reached the other half's clients (their NaN states are not written) ...
    assert not new.written[~mine].any() and new.written[mine].all()
    # ... and none of it reached this half's.
    for a, b in zip(jax.tree.leaves(new.states), jax.tree.leaves(clean.states)):
      np.testing.assert_array_equal(a[mine], b[mine])


def test_other_backends_run_every_client_in_every_process():
  cohort = make_cohort(clients()[:3], BATCH, local_epochs=1, shuffle=False)
  assert local_clients(Engine("loop"), cohort).all()
