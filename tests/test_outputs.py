"""The run's output files: layout, crash-safe resume, TensorBoard events, summary math."""

import json
import math
import struct

import numpy as np
import pytest

from fedjaxscale.scheduler.plans import Status
from fedjaxscale.training import outputs
from fedjaxscale.training.outputs import RunWriter


def fake_rounds(rounds=8, k=4, seed=0, eval_every=2):
  """Deterministic (record, timeline, durations) per round of a sync run with stragglers/drops."""
  rng = np.random.default_rng(seed)
  clock = 0.0
  out = []
  for r in range(1, rounds + 1):
    m = k + 2
    dl, cp, ul = rng.uniform(5, 30, m), rng.lognormal(4, 0.6, m), rng.uniform(10, 60, m)
    fin = clock + dl + cp + ul
    status = np.full(m, int(Status.STRAGGLER), np.int8)
    status[np.argsort(fin)[:k]] = Status.AGGREGATED
    status[np.argsort(fin)[-1]] = Status.DROPPED
    finish = np.where(status == Status.DROPPED, clock + 0.5 * (fin - clock), fin)
    end = float(np.sort(fin[status == Status.AGGREGATED])[-1])
    record = {
      "round": r,
      "clock_s": end,
      "round_duration_s": end - clock,
      "wall_s": 0.5 * r,
      "selected": m,
      "aggregated": k,
      "stragglers": int((status == Status.STRAGGLER).sum()),
      "dropped": 1,
      "train_loss": np.float32(2.0 / r),
      "bytes_down": 100 * m,
      "bytes_up": 100 * k,
    }
    if r % eval_every == 0:
      acc = 0.1 * r
      record["eval"] = {
        "accuracy": acc,
        "loss": 1.0 - acc,
        "client_accuracy_p10": acc - 0.05,
        "client_accuracy_p50": acc,
        "client_accuracy_p90": acc + 0.05,
      }
    timeline = (r, rng.integers(0, 1000, m), status, np.full(m, clock), clock + dl, clock + dl + cp, fin, finish)
    out.append((record, timeline, finish - clock))
    clock = end
  return out


def write_fake_run(workdir, rounds=8, *, upto=None, resume_round=None, summary=True, **kw):
  """Writes rounds ``(resume_round or 0) + 1 .. upto`` of `fake_rounds` into ``workdir``."""
  data = fake_rounds(rounds, **kw)
  upto = rounds if upto is None else upto
  with RunWriter(workdir, resume_round=resume_round) as w:
    w.write_config({"rounds": rounds, "lr": np.float32(0.5), "schedule": object})
    w.write_availability(np.arange(48), 100 + 10 * (np.arange(48) % 24))
    for record, timeline, durations in data[(resume_round or 0) : upto]:
      w.write_timeline(*timeline)
      w.write_round(record, client_durations=durations)
    if summary and upto == rounds:
      w.write_summary(
        outputs.summarize(outputs.read_metrics(workdir), target_accuracy=0.4, wall_s=4.0, clients_trained=4 * rounds)
      )
  return data


def test_layout_files_and_headers(tmp_path):
  data = write_fake_run(tmp_path)
  names = {p.name for p in tmp_path.iterdir()}
  assert names == {"config.json", "metrics.jsonl", "timeline.csv", "availability.csv", "tensorboard", "summary.json"}
  config = json.loads((tmp_path / "config.json").read_text())
  assert config["rounds"] == 8 and config["lr"] == 0.5 and config["schedule"] == str(object)
  records = outputs.read_metrics(tmp_path)
  assert [r["round"] for r in records] == list(range(1, 9))
  assert records[1]["eval"]["client_accuracy_p90"] == pytest.approx(0.25)
  assert "eval" not in records[0]
  assert records[2]["train_loss"] == pytest.approx(2 / 3)  # a NumPy float32 became a JSON number
  lines = (tmp_path / "timeline.csv").read_text().splitlines()
  assert lines[0] == "round,client,status,start,download,compute,upload,finish"
  tl = outputs.read_timeline(tmp_path)
  assert len(lines) - 1 == tl["round"].size == sum(d[1][1].size for d in data)
  assert set(tl["status"]) == {"aggregated", "straggler", "dropped"}
  record, (r, clients, status, start, download, compute, upload, finish), _ = data[0]
  first = tl["round"] == 1
  np.testing.assert_array_equal(tl["client"][first], clients)
  np.testing.assert_array_equal(tl["finish"][first], finish)  # exact: floats are written with repr
  np.testing.assert_array_equal(tl["status"][first], [outputs.STATUS_NAMES[s] for s in status])
  assert (tmp_path / "availability.csv").read_text().splitlines()[:2] == ["hour,online", "0,100"]
  hours, online = outputs.read_availability(tmp_path)
  assert hours.size == 48 and online[23] == 330
  assert list((tmp_path / "tensorboard").glob("events.out.tfevents.*"))


def test_status_names_follow_the_scheduler():
  assert outputs.STATUS_NAMES == ("aggregated", "straggler", "dropped", "accepted", "discarded")
  assert all(outputs.STATUS_NAMES[s] == s.name.lower() for s in Status)


def test_timeline_takes_words_and_rejects_unknown_status(tmp_path):
  with RunWriter(tmp_path, tensorboard=False) as w:
    w.write_timeline(1, [7, 8], ["accepted", "discarded"], [0, 0], [1, 1], [2, 2], [3, 3], [3, np.inf])
    with pytest.raises(ValueError, match="unknown status"):
      w.write_timeline(2, [7], ["late"], [0], [1], [2], [3], [3])
    with pytest.raises(ValueError, match="2 entries"):
      w.write_timeline(2, [7, 8], ["accepted"] * 2, [0], [1, 1], [2, 2], [3, 3], [3, 3])
  tl = outputs.read_timeline(tmp_path)
  assert tl["status"].tolist() == ["accepted", "discarded"] and tl["finish"][1] == np.inf


def test_rounds_must_increase(tmp_path):
  with RunWriter(tmp_path, tensorboard=False) as w:
    w.write_round({"round": 1})
    for bad in (1, 0, 2.0, None):
      with pytest.raises(ValueError, match='"round"'):
        w.write_round({"round": bad})


def _tear(path, keep_bytes):
  """Appends the first ``keep_bytes`` of a copy of the last line/record: a write cut by SIGKILL."""
  data = path.read_bytes()
  tail = data[data.rstrip(b"\n").rfind(b"\n") + 1 :] if path.suffix in (".jsonl", ".csv") else data[-40:]
  path.write_bytes(data + tail[:keep_bytes])


def test_resume_equals_uninterrupted(tmp_path):
  full, resumed = tmp_path / "full", tmp_path / "resumed"
  write_fake_run(full)
  write_fake_run(resumed, upto=5, summary=False)  # "killed" after round 5 ...
  _tear(resumed / "metrics.jsonl", 20)  # ... in the middle of writing round 6
  _tear(resumed / "timeline.csv", 9)
  (event_file,) = (resumed / "tensorboard").glob("events.out.tfevents.*")
  _tear(event_file, 25)
  write_fake_run(resumed, resume_round=3)  # the last checkpoint was round 3's
  for name in ("metrics.jsonl", "timeline.csv", "availability.csv", "config.json", "summary.json"):
    assert (resumed / name).read_bytes() == (full / name).read_bytes(), name
  assert len(list((resumed / "tensorboard").glob("events.out.tfevents.*"))) == 2
  assert outputs.read_scalars(resumed) == outputs.read_scalars(full)


def test_resume_refuses_when_metrics_are_behind_the_checkpoint(tmp_path):
  write_fake_run(tmp_path, upto=2, summary=False)
  with pytest.raises(ValueError, match="ends at round 2"):
    RunWriter(tmp_path, resume_round=3)


def test_fresh_start_clears_a_previous_run(tmp_path):
  write_fake_run(tmp_path)
  with RunWriter(tmp_path) as w:
    w.write_round({"round": 1, "clock_s": 60.0, "round_duration_s": 60.0, "train_loss": 1.0})
  assert len(outputs.read_metrics(tmp_path)) == 1
  assert outputs.read_timeline(tmp_path)["round"].size == 0
  assert not (tmp_path / "summary.json").exists()
  assert outputs.read_scalars(tmp_path) == {"Train/round_duration": [(1, 60.0)], "Train/round_to_loss": [(1, 1.0)]}


def test_disabled_writer_touches_nothing(tmp_path):
  workdir = tmp_path / "run"
  with RunWriter(workdir, enabled=False, resume_round=3) as w:
    w.write_config({"a": 1})
    w.write_availability([0], [1])
    w.write_round({"round": 1})
    w.write_timeline(1, [0], ["aggregated"], [0], [1], [2], [3], [3])
    w.write_summary({})
  assert not workdir.exists()


def test_tensorboard_scalars_and_histogram(tmp_path):
  data = write_fake_run(tmp_path)
  scalars = outputs.read_scalars(tmp_path)
  evals = [d[0] for d in data if "eval" in d[0]]
  assert [s for s, _ in scalars["Train/round_to_loss"]] == list(range(1, 9))
  np.testing.assert_allclose([v for _, v in scalars["Train/round_to_loss"]], [2 / r for r in range(1, 9)], rtol=1e-6)
  np.testing.assert_allclose(
    [v for _, v in scalars["Train/round_duration"]], [d[0]["round_duration_s"] for d in data], rtol=1e-6
  )
  assert [s for s, _ in scalars["Test/round_to_accuracy"]] == [2, 4, 6, 8]
  assert [s for s, _ in scalars["Test/round_to_loss"]] == [2, 4, 6, 8]
  assert [s for s, _ in scalars["Test/time_to_accuracy"]] == [int(r["clock_s"] // 60) for r in evals]
  np.testing.assert_allclose(
    [v for _, v in scalars["Test/time_to_accuracy"]], [r["eval"]["accuracy"] for r in evals], rtol=1e-6
  )
  (event_file,) = (tmp_path / "tensorboard").glob("events.out.tfevents.*")
  histos = [
    (e.step, v.histo)
    for e in outputs._read_events(event_file)
    for v in e.summary.value
    if v.tag == "Train/client_duration"
  ]
  assert [s for s, _ in histos] == list(range(1, 9))
  step, h = histos[0]
  assert h.num == data[0][2].size and h.sum == pytest.approx(data[0][2].sum())
  assert h.min == pytest.approx(data[0][2].min()) and h.max == pytest.approx(data[0][2].max())


def test_event_records_are_crc_checked(tmp_path):
  write_fake_run(tmp_path)
  (event_file,) = (tmp_path / "tensorboard").glob("events.out.tfevents.*")
  raw = bytearray(event_file.read_bytes())
  n = len(list(outputs._read_records(event_file)))
  (length,) = struct.unpack("<Q", raw[:8])
  second = 12 + length + 4
  raw[second + 12] ^= 0xFF  # corrupt the second record's payload
  event_file.write_bytes(bytes(raw))
  assert n > 10 and len(list(outputs._read_records(event_file))) == 1


def test_tensorboard_reads_the_events(tmp_path):
  """TensorBoard's own reader, including the resumed (two-file) case, when it is installed."""
  ea_module = pytest.importorskip("tensorboard.backend.event_processing.event_accumulator")
  write_fake_run(tmp_path, upto=5, summary=False)
  write_fake_run(tmp_path, resume_round=3)
  acc = ea_module.EventAccumulator(
    str(tmp_path / "tensorboard"), size_guidance={ea_module.SCALARS: 0, ea_module.HISTOGRAMS: 0}
  )
  acc.Reload()
  tags = acc.Tags()
  assert {
    "Train/round_to_loss",
    "Train/round_duration",
    "Test/round_to_accuracy",
    "Test/time_to_accuracy",
    "Test/round_to_loss",
  } <= set(tags["scalars"])
  assert "Train/client_duration" in tags["histograms"]
  assert [e.step for e in acc.Scalars("Train/round_to_loss")] == list(range(1, 9))
  assert [e.step for e in acc.Scalars("Test/round_to_accuracy")] == [2, 4, 6, 8]
  assert [e.step for e in acc.Histograms("Train/client_duration")] == list(range(1, 9))


def test_read_metrics_errors(tmp_path):
  with pytest.raises(FileNotFoundError, match="metrics.jsonl"):
    outputs.read_metrics(tmp_path)
  path = tmp_path / "metrics.jsonl"
  path.write_text('{"round": 1}\n{"round": 2\n{"round": 3}\n')
  with pytest.raises(ValueError, match=r"metrics\.jsonl:2: malformed"):
    outputs.read_metrics(tmp_path)
  path.write_text('{"round": 1}\n["round"]\n')
  with pytest.raises(ValueError, match=r'metrics\.jsonl:2: .*int "round"'):
    outputs.read_metrics(tmp_path)
  path.write_text('{"round": 1, "train_loss": NaN}\n\n{"round": 2, "tra')  # killed mid-line: skipped
  records = outputs.read_metrics(tmp_path)
  assert [r["round"] for r in records] == [1] and math.isnan(records[0]["train_loss"])


def test_read_timeline_errors(tmp_path):
  with pytest.raises(FileNotFoundError, match="timeline.csv"):
    outputs.read_timeline(tmp_path)
  (tmp_path / "timeline.csv").write_text("round,client\n")
  with pytest.raises(ValueError, match="header"):
    outputs.read_timeline(tmp_path)
  (tmp_path / "timeline.csv").write_text(outputs.TIMELINE_HEADER + "\n1,2,aggregated,0,1,2,3\n")
  with pytest.raises(ValueError, match="timeline.csv"):
    outputs.read_timeline(tmp_path)


def test_summarize_time_to_target():
  records = [
    {"round": 1, "clock_s": 1800.0, "aggregated": 10, "train_loss": 2.0},
    {"round": 2, "clock_s": 3600.0, "aggregated": 10, "train_loss": 1.5, "eval": {"accuracy": 0.5, "loss": 1.0}},
    {"round": 3, "clock_s": 7200.0, "aggregated": 8, "train_loss": 1.0, "eval": {"accuracy": 0.8, "loss": 0.6}},
    {
      "round": 4,
      "clock_s": 9000.0,
      "aggregated": 10,
      "train_loss": float("nan"),
      "wall_s": 12.0,
      "eval": {"accuracy": 0.7, "loss": 0.7},
      "bytes_down": 5,
      "bytes_up": 3,
    },
  ]
  s = outputs.summarize(records, target_accuracy=0.75, wall_s=20.0, clients_trained=40)
  assert s["rounds"] == 4 and s["simulated_hours"] == 2.5
  assert s["clients_per_s"] == 2.0
  assert (s["best_accuracy"], s["best_accuracy_round"]) == (0.8, 3)
  assert (s["final_accuracy"], s["final_accuracy_round"], s["final_eval_loss"]) == (0.7, 4, 0.7)
  assert (s["time_to_target_hours"], s["time_to_target_round"]) == (2.0, 3)
  assert s["final_train_loss"] == 1.0  # the last finite one
  assert (s["bytes_down"], s["bytes_up"]) == (5, 3)
  # Reached exactly at the threshold; defaults from the records.
  s = outputs.summarize(records, target_accuracy=0.5)
  assert (s["time_to_target_hours"], s["time_to_target_round"]) == (1.0, 2)
  assert s["wall_s"] == 12.0 and s["clients_trained"] == 38
  s = outputs.summarize(records, target_accuracy=0.9, wall_s=1.0, clients_trained=1)
  assert s["time_to_target_hours"] is None and s["time_to_target_round"] is None
  json.dumps(s, allow_nan=False)
  s = outputs.summarize([], target_accuracy=None, wall_s=0.0, clients_trained=0)
  assert s["rounds"] == 0 and s["best_accuracy"] is None and s["clients_per_s"] is None
