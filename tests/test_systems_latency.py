"""The latency model's formulas and units."""

import numpy as np
import pytest

from fedjaxscale.systems import Availability, LatencyModel, SystemTraces, model_bits


def traces():
  av = Availability.from_intervals([0, 1, 2], [0.0, 0.0], [1.0, 1.0], 1.0)
  return SystemTraces.create([20.0, 100.0], [1000.0, 4000.0], [500.0, 4000.0], av)


def test_model_bits():
  assert model_bits(1000) == 32_000
  assert model_bits(10, "float16") == 160
  assert model_bits(10, np.float64) == 640


def test_fixed_steps_mode_by_hand():
  # 1e6 bits at 1,000 kbit/s = 1 s; 20 x 10 samples x 20 ms x 3 = 12 s.
  lm = LatencyModel(model_bits=1_000_000, local_steps=20, batch_size=10)
  lat = lm.latency(traces(), [0, 1])
  np.testing.assert_allclose(lat.download, [1.0, 0.25])
  np.testing.assert_allclose(lat.compute, [12.0, 60.0])
  np.testing.assert_allclose(lat.upload, [2.0, 0.25])
  np.testing.assert_allclose(lat.total, [15.0, 60.5])


def test_epoch_mode_uses_sample_counts():
  lm = LatencyModel(model_bits=1_000_000, epochs=2, backward_factor=1.0)
  lat = lm.latency(traces(), [1, 0], num_samples=np.array([50, 7]))
  np.testing.assert_allclose(lat.compute, [2 * 7 * 100 / 1000, 2 * 50 * 20 / 1000])
  with pytest.raises(ValueError, match="num_samples"):
    lm.latency(traces(), [0])


def test_update_size_and_compression():
  lm = LatencyModel(model_bits=1_000_000, update_bits=2_000_000, compression=0.1, local_steps=1, batch_size=1)
  np.testing.assert_allclose(lm.latency(traces(), [0]).upload, [0.4])


@pytest.mark.parametrize(
  "kwargs",
  [
    dict(model_bits=1),
    dict(model_bits=1, local_steps=1),
    dict(model_bits=1, local_steps=1, batch_size=1, epochs=1),
    dict(model_bits=0, epochs=1),
    dict(model_bits=1, epochs=1, compression=0.0),
  ],
)
def test_bad_configuration(kwargs):
  with pytest.raises(ValueError):
    LatencyModel(**kwargs)
