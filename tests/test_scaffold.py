"""SCAFFOLD against a NumPy reference: three hand-built clients, state carried, a client skipping a round."""

import jax
import numpy as np
import pytest

from fedjaxscale import models
from fedjaxscale.algorithms.scaffold import scaffold
from fedjaxscale.data import make_cohort
from fedjaxscale.engine import Engine
from fedjaxscale.engine.state import StateError

FEATURES, CLASSES, BATCH, POPULATION = 3, 2, 2, 5
LR, SERVER_LR = 0.3, 0.7
SIZES = (3, 5, 2)
# Round -> (population indices in the cohort, per-client step caps or None). Client 1 skips
# round 1; in round 3 client 1 is a straggler that does one step only.
PLAN = [((0, 1, 2), None), ((0, 2), None), ((2, 1, 0), (9, 1, 9)), ((1, 0), None)]


def hand_clients(seed=0):
  rng = np.random.default_rng(seed)
  return [
    {"x": rng.normal(size=(n, FEATURES)).astype(np.float32), "y": rng.integers(0, CLASSES, n).astype(np.int32)}
    for n in SIZES
  ]


def np_grad(w, b, x, y):
  logits = x @ w + b
  p = np.exp(logits - logits.max(1, keepdims=True))
  p /= p.sum(1, keepdims=True)
  d = (p - np.eye(CLASSES)[y]) / len(y)
  return x.T @ d, d.sum(0)


def reference(data, params, rounds):
  """Algorithm 1, option II, in float64 NumPy."""
  w = np.asarray(params["Dense_0"]["kernel"], np.float64)
  b = np.asarray(params["Dense_0"]["bias"], np.float64)
  cw, cb = np.zeros_like(w), np.zeros_like(b)
  ci = {k: (np.zeros_like(w), np.zeros_like(b)) for k in range(len(data))}
  history = []
  for members, caps in rounds:
    dys, dcs, ns = [], [], []
    for pos, k in enumerate(members):
      x, y = data[k]["x"].astype(np.float64), data[k]["y"]
      batches = [(x[i : i + BATCH], y[i : i + BATCH]) for i in range(0, len(y), BATCH)]
      if caps is not None:
        batches = batches[: caps[pos]]
      yw, yb = w.copy(), b.copy()
      for bx, by in batches:
        gw, gb = np_grad(yw, yb, bx, by)
        yw -= LR * (gw - ci[k][0] + cw)
        yb -= LR * (gb - ci[k][1] + cb)
      steps = len(batches)
      new = (ci[k][0] - cw + (w - yw) / (steps * LR), ci[k][1] - cb + (b - yb) / (steps * LR))
      dcs.append((new[0] - ci[k][0], new[1] - ci[k][1]))
      ci[k] = new
      dys.append((w - yw, b - yb))
      ns.append(len(y))
    ns = np.asarray(ns, np.float64)
    w = w - SERVER_LR * sum(n * d[0] for n, d in zip(ns, dys)) / ns.sum()
    b = b - SERVER_LR * sum(n * d[1] for n, d in zip(ns, dys)) / ns.sum()
    cw = cw + sum(d[0] for d in dcs) / POPULATION
    cb = cb + sum(d[1] for d in dcs) / POPULATION
    history.append((w.copy(), b.copy(), cw.copy(), cb.copy(), {k: (v[0].copy(), v[1].copy()) for k, v in ci.items()}))
  return history


class ArrayStore:
  """The simplest store: every client's state in one array, and who has one."""

  def __init__(self, spec, n):
    self.states = jax.tree.map(lambda s: np.zeros((n,) + s.shape, s.dtype), spec)
    self.has = np.zeros(n, bool)

  def gather(self, idx):
    return jax.tree.map(lambda x: x[idx], self.states), ~self.has[idx]

  def scatter(self, idx, states, written):
    idx = np.asarray(idx)[written]
    for target, value in zip(jax.tree.leaves(self.states), jax.tree.leaves(states)):
      target[idx] = value[written]
    self.has[idx] = True


def run(engine, pack=True, rounds=PLAN, data=None):
  data = data or hand_clients()
  model = models.logistic_regression(FEATURES, CLASSES)
  alg = scaffold(model, LR, SERVER_LR, num_clients=POPULATION, engine=engine)
  params = model.init(jax.random.key(0))
  server = alg.init(params)
  store = ArrayStore(alg.state_spec(server), POPULATION)
  history = []
  for r, (members, caps) in enumerate(rounds):
    cohort = make_cohort(
      [data[k] for k in members], BATCH, local_epochs=1, shuffle=False, max_steps=caps, pack=pack, lane_multiple=4
    )
    states, fresh = store.gather(np.asarray(members))
    server, diag, new = alg.apply(server, cohort, jax.random.key(r), states, fresh)
    store.scatter(np.asarray(members), new.states, new.written)
    history.append((jax.device_get(server), jax.tree.map(np.copy, store.states), diag))
  return params, history


def one_device_engine():
  mesh = jax.make_mesh((1,), ("clients",), axis_types=(jax.sharding.AxisType.Explicit,), devices=jax.devices()[:1])
  return Engine("vmap", mesh=mesh)


@pytest.fixture(scope="module")
def packed_run():
  return run(Engine("vmap"), pack=True)


def test_scaffold_matches_numpy_reference(packed_run):
  params, history = packed_run
  ref = reference(hand_clients(), jax.device_get(params), PLAN)
  for (server, states, _), (w, b, cw, cb, ci) in zip(history, ref):
    np.testing.assert_allclose(server.params["Dense_0"]["kernel"], w, atol=1e-5)
    np.testing.assert_allclose(server.params["Dense_0"]["bias"], b, atol=1e-5)
    np.testing.assert_allclose(server.control["Dense_0"]["kernel"], cw, atol=1e-5)
    np.testing.assert_allclose(server.control["Dense_0"]["bias"], cb, atol=1e-5)
    for k, (ciw, cib) in ci.items():
      np.testing.assert_allclose(states["Dense_0"]["kernel"][k], ciw, atol=1e-5)
      np.testing.assert_allclose(states["Dense_0"]["bias"][k], cib, atol=1e-5)
  # The reference itself moves: a client variate and the server's are not zero after a round.
  assert np.abs(ref[0][2]).max() > 1e-3 and np.abs(ref[-1][4][1][0]).max() > 1e-3


@pytest.mark.parametrize(
  "name,engine,pack",
  [
    ("one client per lane", lambda: Engine("vmap"), False),
    ("loop", lambda: Engine("loop"), True),
    ("one device", one_device_engine, True),
  ],
)
def test_scaffold_backends_and_devices_agree(packed_run, name, engine, pack):
  _, packed = packed_run
  _, other = run(engine(), pack=pack)
  for (s1, st1, d1), (s2, st2, d2) in zip(packed, other):
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, atol=1e-6, err_msg=name), (s1, st1), (s2, st2))
    np.testing.assert_allclose(d1["client_loss"], d2["client_loss"], atol=1e-6)


def test_packed_cohort_is_really_packed():
  cohort = make_cohort(hand_clients(), BATCH, local_epochs=1, shuffle=False, lane_multiple=4)
  assert cohort.parts[0].packed


def test_state_of_the_wrong_shape_is_refused():
  model = models.logistic_regression(FEATURES, CLASSES)
  alg = scaffold(model, LR, num_clients=POPULATION, engine=Engine("vmap"))
  server = alg.init(model.init(jax.random.key(0)))
  cohort = make_cohort(hand_clients(), BATCH, local_epochs=1, shuffle=False)
  good = ArrayStore(alg.state_spec(server), 3).states
  bad = jax.tree.map(lambda x: x, good)
  bad["Dense_0"]["kernel"] = np.zeros((3, FEATURES + 1, CLASSES), np.float32)
  with pytest.raises(StateError, match=r"\['Dense_0'\]\['kernel'\].*float32\[3, 3, 2\]"):
    alg.apply(server, cohort, jax.random.key(0), bad, np.ones(3, bool))
  bad["Dense_0"]["kernel"] = good["Dense_0"]["kernel"].astype(np.float16)
  with pytest.raises(StateError, match="float16"):
    alg.apply(server, cohort, jax.random.key(0), bad, np.ones(3, bool))
