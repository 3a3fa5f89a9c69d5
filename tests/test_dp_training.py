"""End-to-end DP and compression runs (small variants): epsilon per round as dp-accounting
gives it, resume bit-identical with noise, the fixed-size path, and bad input refused."""

import json
import os
import subprocess
import sys

import jax
import numpy as np
import pytest

from fedjaxscale.training import ConfigError, train_and_evaluate
from fedjaxscale.training import privacy as privacy_lib
from fedjaxscale.training.outputs import read_metrics, read_scalars
from tests.test_training import CONFIGS, final_params, load_config, without_wall


@pytest.fixture(scope="module")
def dp_run(tmp_path_factory):
  workdir = tmp_path_factory.mktemp("dp")
  config = load_config("dp_fedavg", "small")
  return config, workdir, train_and_evaluate(config, workdir, show_progress=False)


def test_dp_run_reports_epsilon_every_round(dp_run):
  config, workdir, summary = dp_run
  records = read_metrics(workdir)
  q, z = config.system.sampling_rate, config.privacy.noise_multiplier
  for r in records:
    want = privacy_lib.epsilon_for(privacy_lib.poisson_event(q, z), r["round"], config.privacy.delta)
    assert r["epsilon"] == pytest.approx(want, rel=1e-9)
    assert 0 <= r["clipped_fraction"] <= 1 and r["clip_norm"] == config.privacy.clip_norm
    assert r["noise_std"] == pytest.approx(z * config.privacy.clip_norm / (q * config.data.num_clients))
  saved = json.loads((workdir / "summary.json").read_text())
  assert saved["final_epsilon"] == records[-1]["epsilon"] == saved["privacy"]["epsilon"]
  assert "Poisson sampling" in saved["privacy"]["guarantee"]
  assert saved["privacy"]["participation"]["rounds"] == config.rounds
  assert [v for _, v in read_scalars(workdir)["Privacy/epsilon"]] == pytest.approx([r["epsilon"] for r in records])


def test_dp_resume_is_bit_identical(dp_run, tmp_path):
  config, full_dir, _ = dp_run
  train_and_evaluate(load_config("dp_fedavg", "small", rounds=2), tmp_path, show_progress=False)
  train_and_evaluate(config, tmp_path, resume=True, show_progress=False)
  assert without_wall(read_metrics(tmp_path)) == without_wall(read_metrics(full_dir))
  from fedjaxscale.training.setup import build

  parts = build(config, tmp_path)
  like = parts.algorithm.init(parts.model.init(jax.random.key(0)))
  a, host_a = final_params(tmp_path, like)
  b, host_b = final_params(full_dir, like)
  jax.tree.map(lambda x, y: np.testing.assert_array_equal(np.asarray(x), np.asarray(y)), a, b)
  np.testing.assert_array_equal(host_a["privacy"]["aggregated"], host_b["privacy"]["aggregated"])


def test_fixed_size_dp_with_traces_secagg_and_compression(tmp_path):
  """Fixed-size sampling from the online clients on the shipped traces, quantized and summed modularly."""
  config = load_config(
    "compression",
    "small,bits=4",
    **{"privacy.enabled": True, "privacy.clip_norm": 0.5, "secagg.enabled": True, "secagg.bits": 24},
  )
  summary = train_and_evaluate(config, tmp_path, show_progress=False)
  p = summary["privacy"]
  assert p["sampling"] == "fixed_size_from_online" and p["accountant"] == "rdp"
  assert p["mean_pool"] < config.data.num_clients  # the traces keep most clients offline
  assert np.isfinite(summary["final_epsilon"]) and summary["final_epsilon"] > 0
  assert summary["upload_bits_per_client"] == 24 * _num_params(config)  # SecAgg sends the dense vector
  records = read_metrics(tmp_path)
  assert all(r["bytes_up"] == 3 * _num_params(config) * r["trained"] for r in records)


def _num_params(config):
  return 60 * 32 + 32 + 32 * 10 + 10


def test_compression_small_times_uploads_from_the_encoder(tmp_path):
  config = load_config("compression", "small,bits=2")
  from fedjaxscale.training.setup import build

  parts = build(config, tmp_path)
  # 2,282 numbers rotate in 5 blocks of 512 (2,560), not one of 4,096 (encoders._rotation_shape).
  assert parts.num_params == 2282
  assert parts.upload_bits == 2560 * 2 + 64 == parts.latency.update_bits
  plan = parts.planner.plan_round()
  up = parts.traces.up_kbps[plan.clients] * 1000.0
  np.testing.assert_allclose(plan.finish - plan.compute_end, parts.upload_bits / up, rtol=1e-9)


@pytest.mark.parametrize(
  "overrides, message",
  [
    ({"privacy.clip_norm": 0.0}, "privacy.clip_norm: must be > 0"),
    ({"privacy.noise_multiplier": -0.5}, "privacy.noise_multiplier: must be >= 0"),
    ({"privacy.delta": 0.0}, r"privacy.delta: must be in \(0, 1\)"),
    ({"privacy.delta": 1.0}, r"privacy.delta: must be in \(0, 1\)"),
    ({"system.sampling_rate": 0.0}, r"system.sampling_rate: must be in \(0, 1\]"),
    ({"system.sampling_rate": 1.5}, r"system.sampling_rate: must be in \(0, 1\]"),
    ({"compression.encoder": "quantize", "compression.bits": 0}, "compression.bits: must be an integer in 1..32"),
    ({"compression.encoder": "quantize", "compression.bits": 33}, "compression.bits: must be an integer in 1..32"),
    ({"compression.encoder": "topk", "compression.topk": 10**6}, "compression.topk: .*k=1000000 entries"),
    ({"compression.error_feedback": True}, r"compression.error_feedback: needs compression.encoder"),
    (
      {"compression.encoder": "quantize", "compression.rotate": True, "compression.rotation_block": 1000},
      "compression.rotation_block: must be a power of 2",
    ),
    ({"algorithm.name": "scaffold"}, "algorithm.name: scaffold keeps client states of its own"),
    ({"system.selection": "oort"}, "privacy.enabled: .*training losses"),
    ({"system.mode": "async"}, "system.mode='sync'"),
  ],
)
def test_bad_privacy_or_compression_config_is_refused(tmp_path, overrides, message):
  workdir = tmp_path / "run"
  with pytest.raises(ConfigError, match=message):
    train_and_evaluate(load_config("dp_fedavg", "small", **overrides), workdir, show_progress=False)
  assert not workdir.exists()


def test_cli_exits_2_naming_the_field(tmp_path):
  workdir = tmp_path / "run"
  out = subprocess.run(
    [
      sys.executable,
      "-m",
      "fedjaxscale.main",
      f"--config={CONFIGS / 'dp_fedavg.py'}:small",
      f"--workdir={workdir}",
      "--config.privacy.delta=2.0",
    ],
    env=dict(os.environ, JAX_PLATFORMS="cpu"),
    capture_output=True,
    text=True,
    timeout=120,
  )
  assert out.returncode == 2, out.stderr[-2000:]
  assert "privacy.delta" in out.stderr and "Traceback" not in out.stderr
  assert not workdir.exists()


def test_sweeps_do_not_stack_wrapped_aggregation():
  """A stacked sweep builds the bare algorithm: DP, encoders and SecAgg points must run one at a time."""
  from fedjaxscale.training import stacked

  plain = load_config("compression", "small", **{"compression.encoder": "none"})
  assert stacked.can_stack(plain)
  assert not stacked.can_stack(load_config("compression", "small"))
  assert not stacked.can_stack(load_config("dp_fedavg", "small", **{"system.selection": "random"}))
  assert not stacked.can_stack(
    load_config("compression", "small", **{"compression.encoder": "none", "secagg.enabled": True})
  )
