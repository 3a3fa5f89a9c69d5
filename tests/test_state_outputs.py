"""The personalized evaluation (``eval_personal``) in a run's outputs: the CLI's summary lines,
TensorBoard scalars and the accuracy plot, next to the global model's."""

import numpy as np
import pytest
from matplotlib.figure import Figure

from fedjaxscale.training import outputs, plots

QUANTILES = ("client_accuracy_p10", "client_accuracy_p50", "client_accuracy_p90")


def records(personal=True, rounds=4):
  out = []
  for r in range(1, rounds + 1):
    record = {"round": r, "clock_s": 60.0 * r, "round_duration_s": 60.0, "train_loss": 1.0 / r, "aggregated": 3}
    if r % 2 == 0:
      g = 0.1 * r
      record["eval"] = dict(zip(("accuracy", "loss", *QUANTILES), (g, 1 - g, g - 0.1, g, g + 0.1)))
      if personal:
        p = g + 0.15
        record["eval_personal"] = dict(zip(("accuracy", "loss", *QUANTILES), (p, 1 - p, p - 0.05, p + 0.01, p + 0.05)))
    out.append(record)
  return out


def write(workdir, recs):
  with outputs.RunWriter(workdir) as w:
    for record in recs:
      w.write_round(record)


def test_summary_shows_personalized_beside_global():
  summary = outputs.summarize(records())
  assert summary["final_personal"]["accuracy"] == pytest.approx(0.55)
  assert summary["final_client_accuracy_p90"] == pytest.approx(0.5)
  lines = outputs.summary_lines(summary, "wd")
  assert "global model: accuracy 0.400, per-client p10/p50/p90 0.300/0.400/0.500" in lines
  assert "personalized: accuracy 0.550, per-client p10/p50/p90 0.500/0.560/0.600" in lines


def test_summary_without_personalized_evaluation_has_no_such_line():
  summary = outputs.summarize(records(personal=False))
  assert "final_personal" not in summary
  assert summary["final_client_accuracy_p10"] == pytest.approx(0.3)
  for s in (summary, outputs.summarize([])):
    assert not any(line.startswith(("global", "personalized")) for line in outputs.summary_lines(s, "wd"))


def test_tensorboard_has_the_personalized_scalars(tmp_path):
  recs = records()
  write(tmp_path, recs)
  scalars = outputs.read_scalars(tmp_path)
  personal = [r["eval_personal"] for r in recs if "eval_personal" in r]
  for tag, key in [(outputs.PERSONAL_ROUND_TO_ACCURACY, "accuracy")] + [(f"Test/personal_{q}", q) for q in QUANTILES]:
    assert [s for s, _ in scalars[tag]] == [2, 4], tag
    np.testing.assert_allclose([v for _, v in scalars[tag]], [p[key] for p in personal], rtol=1e-6)
  np.testing.assert_allclose([v for _, v in scalars["Test/round_to_accuracy"]], [0.2, 0.4], rtol=1e-6)


@pytest.mark.parametrize("x_axis", ["round", "hours"])
def test_accuracy_plot_draws_personalized_beside_global(x_axis):
  recs = records()
  fig = Figure()
  plots._accuracy(fig, recs, x_axis, None)
  (ax,) = fig.axes
  lines = {line.get_label(): line for line in ax.get_lines()}
  np.testing.assert_allclose(lines["personalized"].get_ydata(), [0.35, 0.55])
  np.testing.assert_allclose(lines["test accuracy"].get_ydata(), [0.2, 0.4])
  bands = {c.get_label() for c in ax.collections}
  assert {"personalized, per-client p10-p90", "per-client accuracy, p10-p90"} <= bands
  fig = Figure()
  plots._accuracy(fig, records(personal=False), x_axis, None)
  assert "personalized" not in {line.get_label() for line in fig.axes[0].get_lines()}


def test_make_plots_with_personalized_evaluation(tmp_path):
  write(tmp_path, records())
  (path,) = plots.make_plots(tmp_path, only=["accuracy_vs_round.png"])
  assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
