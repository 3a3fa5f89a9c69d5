"""Simulated secure aggregation: modular fixed-point sums, wrap-around, and its cost in a round."""

import jax
import numpy as np
import optax
import pytest

from fedjaxscale import algorithms, models
from fedjaxscale.algorithms import dp, secagg
from fedjaxscale.data import make_cohort
from tests.test_algorithms import BATCH, CLASSES, FEATURES, tiny_clients


def test_secagg_modular_sum_and_wraparound():
  sa = secagg.secagg(8, 1.0)  # s = 128, sums in [-1, 1)
  x = [np.array([0.25, -0.5, 0.3], np.float32), np.array([0.25, -0.25, 0.5], np.float32)]
  total = sum(np.asarray(secagg.encode(sa, v)) for v in x)  # int32 addition, as the engine does
  got = np.asarray(secagg.decode(sa, total))
  np.testing.assert_allclose(got, [0.5, -0.75, 0.8], atol=2 / 128)  # truncation: within 1/s a client
  # A sum past the range wraps around modulo 2**bits.
  big = [np.array([0.9], np.float32)] * 2
  wrapped = np.asarray(secagg.decode(sa, sum(np.asarray(secagg.encode(sa, v)) for v in big)))
  assert wrapped[0] == pytest.approx(1.8 - 2.0, abs=2 / 128)
  with pytest.raises(ValueError, match="bits"):
    secagg.secagg(1, 1.0)


def test_secagg_through_a_round_matches_plain_dp_within_precision():
  model = models.logistic_regression(FEATURES, CLASSES)
  cohort = make_cohort(tiny_clients(), BATCH, local_epochs=1, shuffle=False)
  params = model.init(jax.random.key(0))
  out = []
  for sa in (None, secagg.secagg(24, 1.0), secagg.secagg(8, 1e-3)):
    alg = dp.private_aggregation(
      algorithms.fedavg(model, optax.sgd(0.1)), clip_norm=0.1, expected_clients=3, secure_aggregation=sa
    )
    state, _ = alg.apply(alg.init(params), cohort, jax.random.key(0))
    out.append(np.asarray(state.params["Dense_0"]["kernel"]))
  np.testing.assert_allclose(out[1], out[0], atol=3 * 2.0**-23 / 3 + 1e-7)  # 3 clients x 1/s, / 3
  assert np.max(np.abs(out[2] - out[0])) > 1e-4  # a range of 1e-3 wraps: the accuracy cost shows
