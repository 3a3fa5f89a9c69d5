"""Ditto against a NumPy reference: three hand-built clients, personal models carried, a skipped round."""

import jax
import numpy as np
import optax
import pytest

from fedjaxscale import models
from fedjaxscale.algorithms.ditto import ditto
from fedjaxscale.data import make_cohort
from fedjaxscale.engine import Engine
from tests.test_scaffold import BATCH, CLASSES, FEATURES, ArrayStore, hand_clients, np_grad, one_device_engine

LR, PERSONAL_LR, LAM = 0.3, 0.2, 0.5
PLAN = [((0, 1, 2), None), ((0, 2), None), ((2, 1, 0), (9, 1, 9))]


def reference(data, params, rounds):
  w = np.asarray(params["Dense_0"]["kernel"], np.float64)
  b = np.asarray(params["Dense_0"]["bias"], np.float64)
  personal = {}
  history = []
  for members, caps in rounds:
    deltas, ns = [], []
    for pos, k in enumerate(members):
      x, y = data[k]["x"].astype(np.float64), data[k]["y"]
      batches = [(x[i : i + BATCH], y[i : i + BATCH]) for i in range(0, len(y), BATCH)]
      if caps is not None:
        batches = batches[: caps[pos]]
      vw, vb = personal.get(k, (w.copy(), b.copy()))
      yw, yb = w.copy(), b.copy()
      for bx, by in batches:
        gw, gb = np_grad(yw, yb, bx, by)
        pw, pb = np_grad(vw, vb, bx, by)
        yw, yb = yw - LR * gw, yb - LR * gb
        vw, vb = vw - PERSONAL_LR * (pw + LAM * (vw - w)), vb - PERSONAL_LR * (pb + LAM * (vb - b))
      personal[k] = (vw, vb)
      deltas.append((w - yw, b - yb))
      ns.append(len(y))
    ns = np.asarray(ns, np.float64)
    w = w - sum(n * d[0] for n, d in zip(ns, deltas)) / ns.sum()
    b = b - sum(n * d[1] for n, d in zip(ns, deltas)) / ns.sum()
    history.append((w.copy(), b.copy(), {k: (v[0].copy(), v[1].copy()) for k, v in personal.items()}))
  return history


def run(engine, pack=True):
  data = hand_clients()
  model = models.logistic_regression(FEATURES, CLASSES)
  alg = ditto(model, optax.sgd(LR), optax.sgd(PERSONAL_LR), lam=LAM, engine=engine)
  params = model.init(jax.random.key(0))
  server = alg.init(params)
  store = ArrayStore(alg.state_spec(server), 4)
  history = []
  for r, (members, caps) in enumerate(PLAN):
    cohort = make_cohort(
      [data[k] for k in members], BATCH, local_epochs=1, shuffle=False, max_steps=caps, pack=pack, lane_multiple=4
    )
    server, diag, new = alg.apply(server, cohort, jax.random.key(r), *store.gather(np.asarray(members)))
    store.scatter(np.asarray(members), new.states, new.written)
    history.append((jax.device_get(server.params), jax.tree.map(np.copy, store.states), store.has.copy(), diag))
  return params, history


@pytest.fixture(scope="module")
def packed_run():
  return run(Engine("vmap"))


def test_ditto_matches_numpy_reference(packed_run):
  params, history = packed_run
  ref = reference(hand_clients(), jax.device_get(params), PLAN)
  for (server, states, has, diag), (w, b, personal) in zip(history, ref):
    np.testing.assert_allclose(server["Dense_0"]["kernel"], w, atol=1e-5)
    np.testing.assert_allclose(server["Dense_0"]["bias"], b, atol=1e-5)
    assert sorted(np.flatnonzero(has)) == sorted(personal)
    for k, (vw, vb) in personal.items():
      np.testing.assert_allclose(states["Dense_0"]["kernel"][k], vw, atol=1e-5)
      np.testing.assert_allclose(states["Dense_0"]["bias"][k], vb, atol=1e-5)
    assert np.all(np.isfinite(diag["client_personal_loss"]))
  # Personal models differ from the global model and from each other.
  w_final, _, personal = ref[-1]
  assert np.abs(personal[0][0] - w_final).max() > 1e-3 and np.abs(personal[0][0] - personal[1][0]).max() > 1e-3


@pytest.mark.parametrize(
  "name,engine,pack",
  [
    ("one client per lane", lambda: Engine("vmap"), False),
    ("loop", lambda: Engine("loop"), True),
    ("one device", one_device_engine, True),
  ],
)
def test_ditto_backends_and_devices_agree(packed_run, name, engine, pack):
  _, packed = packed_run
  _, other = run(engine(), pack=pack)
  for a, b in zip(packed, other):
    jax.tree.map(lambda x, y: np.testing.assert_allclose(x, y, atol=1e-6, err_msg=name), a[:3], b[:3])
