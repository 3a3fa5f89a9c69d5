"""Plots of a run directory: every PNG written, absent data skipped, bad input reported."""

import numpy as np
import pytest

from fedjaxscale.training import outputs, plots
from tests.test_outputs import write_fake_run

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
ALL = {
  "accuracy_vs_round.png",
  "accuracy_vs_hours.png",
  "train_loss_vs_round.png",
  "round_duration_hist.png",
  "gantt.png",
  "online_clients.png",
}


def assert_png(path):
  data = path.read_bytes()
  assert data[:8] == PNG_SIGNATURE, path
  assert len(data) > 10_000, (path, len(data))  # a drawn figure, not an empty canvas


def test_make_plots_writes_every_png(tmp_path):
  write_fake_run(tmp_path)
  paths = plots.make_plots(tmp_path)
  assert {p.name for p in paths} == ALL
  assert all(p.parent == tmp_path / "plots" for p in paths)
  for p in paths:
    assert_png(p)


def test_absent_data_is_skipped_not_fatal(tmp_path, caplog):
  with outputs.RunWriter(tmp_path, tensorboard=False) as w:  # one round, no eval, no timeline rows
    w.write_round({"round": 1, "clock_s": 30.0, "round_duration_s": 30.0, "train_loss": 1.0})
  (tmp_path / "timeline.csv").unlink()
  with caplog.at_level("INFO", logger=plots.__name__):
    paths = plots.make_plots(tmp_path, out_dir=tmp_path / "elsewhere")
  assert {p.name for p in paths} == {"train_loss_vs_round.png", "round_duration_hist.png"}
  assert all(p.parent == tmp_path / "elsewhere" for p in paths)
  assert "skipped accuracy_vs_round.png: no evaluated round" in caplog.text
  assert "skipped gantt.png: no timeline.csv" in caplog.text
  assert "skipped online_clients.png: no availability.csv" in caplog.text


def test_gantt_samples_spread_over_finish_order():
  finish = np.array([5.0, 1.0, 4.0, 2.0, 3.0, 9.0, 8.0])
  tl = {"round": np.array([1, 1, 1, 1, 1, 2, 2]), "finish": finish}
  rows = plots._gantt_rows(tl, [1, 2], max_clients=6)
  assert [r.tolist() for r in rows] == [[1, 4, 0], [6, 5]]  # fastest, median, slowest of round 1


def test_gantt_rounds_and_sample_size(tmp_path):
  write_fake_run(tmp_path)
  (path,) = plots.make_plots(tmp_path, max_gantt_clients=4, gantt_rounds=[2, 5, 99], only=["gantt.png"])
  assert_png(path)
  assert plots.make_plots(tmp_path, gantt_rounds=[99], only=["gantt.png"]) == []  # absent rounds: skipped
  with pytest.raises(ValueError, match="unknown plots"):
    plots.make_plots(tmp_path, only=["gant.png"])


def test_bad_workdir(tmp_path, capsys):
  with pytest.raises(FileNotFoundError, match="metrics.jsonl"):
    plots.make_plots(tmp_path)
  (tmp_path / "metrics.jsonl").write_text('{"round": 1}\nnot json\n')
  with pytest.raises(ValueError, match=r"metrics\.jsonl:2"):
    plots.make_plots(tmp_path)
  assert plots.main([str(tmp_path)]) == 2
  assert "metrics.jsonl:2" in capsys.readouterr().err


def test_main_prints_the_written_paths(tmp_path, capsys):
  write_fake_run(tmp_path)
  (tmp_path / "availability.csv").unlink()
  assert plots.main([str(tmp_path)]) == 0
  out, err = capsys.readouterr()
  assert {line.rsplit("/", 1)[-1] for line in out.split()} == ALL - {"online_clients.png"}
  assert "skipped online_clients.png" in err


def test_drawer_child_draws_what_make_plots_draws(tmp_path):
  write_fake_run(tmp_path / "a")
  write_fake_run(tmp_path / "b")
  drawer = plots.Drawer()  # the child imports matplotlib, then waits for a workdir
  paths = drawer.draw(tmp_path / "a")
  drawer.close()  # nothing left to stop
  assert sorted(p.name for p in paths) == sorted(p.name for p in plots.make_plots(tmp_path / "b"))
  assert all(p.parent == (tmp_path / "a" / "plots").resolve() for p in paths)
  for p in paths:
    assert_png(p)


def test_drawer_draws_here_when_its_child_fails(tmp_path, monkeypatch, caplog):
  write_fake_run(tmp_path)
  monkeypatch.setattr(plots.sys, "executable", "false")  # a child that exits 1 at once
  with caplog.at_level("WARNING", logger=plots.__name__):
    paths = plots.Drawer().draw(tmp_path)
  assert {p.name for p in paths} == ALL
  assert "the plot process failed (exit 1)" in caplog.text


def test_drawer_close_stops_a_waiting_child():
  drawer = plots.Drawer()
  child = drawer._child
  drawer.close()
  assert child.poll() is not None and drawer._child is None
