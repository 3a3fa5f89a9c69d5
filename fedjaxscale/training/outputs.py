"""What a run writes into its workdir, and readers for it (NumPy only: no JAX).

The workdir layout (the contract; readers ignore keys and files they do not know):

- ``config.json``: the resolved config (`RunWriter.write_config`).
- ``metrics.jsonl``: one JSON object per round, in round order:

  - ``round``: 1-based round number (int).
  - ``clock_s``: the simulated clock at the round's end (seconds since the simulation started).
  - ``round_duration_s``: simulated seconds the round took.
  - ``wall_s``: wall seconds since the run started.
  - ``selected``, ``aggregated``, ``stragglers``, ``dropped``: client counts.
  - ``train_loss``: mean training loss of the aggregated clients.
  - ``bytes_down``, ``bytes_up``: bytes sent to and received from clients (``bytes_up`` counts the
    encoder's exact upload size when ``compression.encoder`` is set).
  - DP runs (``privacy.enabled``): ``epsilon`` (at ``privacy.delta``, after this round),
    ``clipped_fraction`` (of the aggregated clients), ``clip_norm`` (C used this round) and
    ``noise_std`` (std of the noise on the averaged update); TensorBoard ``Privacy/*``.
  - ``eval`` (only on rounds that evaluated): ``{accuracy, loss, client_accuracy_p10,
    client_accuracy_p50, client_accuracy_p90, ...}``: example-weighted accuracy and loss over
    the test clients, and percentiles of the per-client accuracy (FedScale's fairness view).
  - ``eval_personal`` (with ``eval_personal`` set): the same keys for each client evaluated with
    its own model (Ditto's personal model, or the global model fine-tuned on its data).
  - ``states_stored`` (stateful algorithms): clients holding a state in the store so far.

  - ``nonfinite``: clients whose update was non-finite and left out of the aggregate; in a round
    where every trained client was non-finite ``train_loss`` is ``null``.

  More keys may appear. Every JSON file is strict JSON: a non-finite float is written as
  ``null`` (never a bare ``NaN`` or ``Infinity``).
- ``timeline.csv``: header ``round,client,status,start,download,compute,upload,finish``; one
  row per selected client per round. ``status`` is one of ``aggregated``, ``straggler``,
  ``dropped`` (synchronous rounds), ``accepted``, ``discarded`` (asynchronous). Times are
  absolute simulated seconds: ``start`` is when the client was selected; ``download``,
  ``compute`` and ``upload`` are the END times of those phases; ``finish`` is the upload's end,
  or the time the client went offline for ``dropped`` rows.
- ``availability.csv``: header ``hour,online``: clients online at each simulated hour of the
  trace period (written once, `RunWriter.write_availability`).
- ``tensorboard/``: TensorBoard event files with FedScale's scalar names:
  ``Train/round_to_loss`` and ``Train/round_duration`` (simulated seconds), step = round;
  ``Test/round_to_accuracy`` and ``Test/round_to_loss``, step = round;
  ``Test/time_to_accuracy``, step = simulated minutes (int); and the histogram
  ``Train/client_duration`` (the round's client durations in simulated seconds), step = round.
- ``summary.json``: written at the end (`summarize`): rounds, simulated hours, wall seconds,
  clients trained per wall second, best and final accuracy, and the simulated hours and round
  at which the target accuracy was first reached (``null`` if it was not), and the non-finite
  client updates left out (``nonfinite_clients``, ``nonfinite_rounds``: rounds with no finite one);
  DP runs add ``final_epsilon`` and a ``privacy`` block (epsilon, delta, accountant, sampling, the
  realized per-client participation rates and ``guarantee``: what the epsilon is, and under which
  assumption).
- ``plots/``: PNGs (`fedjaxscale.training.plots.make_plots`).

Crash safety and resume: every round's metrics line, timeline rows and TensorBoard events are
flushed before `RunWriter.write_round` / `RunWriter.write_timeline` return, so a SIGKILL loses
at most the round being written. ``RunWriter(workdir, resume_round=r)`` cuts every file back to
rounds ``<= r`` (a half-written last line is dropped), so a run resumed from round ``r``'s
checkpoint leaves the same ``metrics.jsonl`` and ``timeline.csv`` as one never stopped (apart
from ``wall_s``). Write round ``r``'s outputs before saving round ``r``'s checkpoint.

Example::

  with RunWriter(workdir) as writer:
    writer.write_config(config.to_dict())
    for r in range(1, rounds + 1):
      ...
      writer.write_timeline(r, clients, status, start, download, compute, upload, finish)
      writer.write_round({'round': r, 'clock_s': clock, ...}, client_durations=finish - start)
    writer.write_summary(summarize(read_metrics(workdir), target_accuracy=0.8, wall_s=wall,
                                   clients_trained=trained))
"""

from __future__ import annotations

import io
import json
import math
import os
import pathlib
import struct
import time
from collections.abc import Iterator, Sequence
from typing import Any

import numpy as np

from fedjaxscale.scheduler.plans import Status

CONFIG = "config.json"
METRICS = "metrics.jsonl"
TIMELINE = "timeline.csv"
AVAILABILITY = "availability.csv"
SUMMARY = "summary.json"
# DP runs: TensorBoard tags of the per-round privacy metrics (step = round).
PRIVACY_SCALARS = (
  ("Privacy/epsilon", "epsilon"),
  ("Privacy/clipped_fraction", "clipped_fraction"),
  ("Privacy/clip_norm", "clip_norm"),
  ("Privacy/noise_std", "noise_std"),
)
TENSORBOARD = "tensorboard"
PLOTS = "plots"

TIMELINE_COLUMNS = ("round", "client", "status", "start", "download", "compute", "upload", "finish")
TIMELINE_HEADER = ",".join(TIMELINE_COLUMNS)
AVAILABILITY_HEADER = "hour,online"
# Index = the scheduler's `Status` value, so plans' int8 status arrays can be passed directly.
STATUS_NAMES = tuple(s.name.lower() for s in sorted(Status))

# TensorBoard tags (FedScale's names). Every tag but TIME_TO_ACCURACY has step = round.
ROUND_TO_LOSS = "Train/round_to_loss"
ROUND_DURATION = "Train/round_duration"
CLIENT_DURATION = "Train/client_duration"
ROUND_TO_ACCURACY = "Test/round_to_accuracy"
TEST_ROUND_TO_LOSS = "Test/round_to_loss"
TIME_TO_ACCURACY = "Test/time_to_accuracy"
PERSONAL_ROUND_TO_ACCURACY = "Test/personal_round_to_accuracy"  # eval_personal: each client's own model

_EVENT_GLOB = "events.out.tfevents.*"
_TIMELINE_DTYPE = np.dtype(
  [("round", np.int64), ("client", np.int64), ("status", "U10")] + [(c, np.float64) for c in TIMELINE_COLUMNS[3:]]
)


class RunWriter:
  """Writes a run's per-round outputs into ``workdir`` (layout in the module docstring).

  Args:
    workdir: the run directory (created if missing).
    enabled: False on non-zero processes of a multi-host run: every method is then a no-op
      and nothing is touched on disk.
    tensorboard: also write TensorBoard event files.
    resume_round: None starts fresh (``metrics.jsonl`` and ``timeline.csv`` are emptied and old
      event files removed); ``r`` continues a run after round ``r``: rows and events of later
      rounds are cut away and new ones appended. ``summary.json`` is removed either way (it
      describes a finished run).
  """

  def __init__(self, workdir, *, enabled: bool = True, tensorboard: bool = True, resume_round: int | None = None):
    self.workdir = pathlib.Path(workdir)
    self.enabled = enabled
    self._metrics = self._timeline = self._events = None
    self._last_round = 0
    if not enabled:
      return
    if resume_round is not None and (int(resume_round) != resume_round or resume_round < 0):
      raise ValueError(f"resume_round must be an int >= 0, got {resume_round!r}")
    self.workdir.mkdir(parents=True, exist_ok=True)
    metrics, timeline = self.workdir / METRICS, self.workdir / TIMELINE
    tb_dir = self.workdir / TENSORBOARD
    if resume_round is not None:
      check_resumable(self.workdir, int(resume_round))  # before anything is changed
    (self.workdir / SUMMARY).unlink(missing_ok=True)
    if resume_round is None:
      metrics.write_text("")
      timeline.write_text(TIMELINE_HEADER + "\n")
      for path in tb_dir.glob(_EVENT_GLOB):
        path.unlink()
    else:
      self._last_round = int(resume_round)
      _truncate_metrics(metrics, self._last_round)
      _truncate_timeline(timeline, self._last_round)
      for path in sorted(tb_dir.glob(_EVENT_GLOB)):
        _truncate_events(path, self._last_round)
    self._metrics = open(metrics, "a", encoding="utf-8")
    self._timeline = open(timeline, "a", encoding="utf-8")
    if tensorboard:
      from tensorboardX import event_file_writer  # pylint: disable=g-import-not-at-top

      tb_dir.mkdir(exist_ok=True)
      # tensorboardX names files by the second; the index keeps a resumed run's file distinct
      # from (and sorted after) the previous ones even within the same second.
      index = len(list(tb_dir.glob(_EVENT_GLOB)))
      self._events = event_file_writer.EventsWriter(str(tb_dir / "events"), f".{index:04d}")
      self._events.flush()

  def write_config(self, config: dict) -> None:
    """Writes the resolved config as ``config.json`` (non-JSON values as their ``str``)."""
    if self.enabled:
      _write_json_atomic(self.workdir / CONFIG, config, default=_json_default_str)

  def write_availability(self, hours, counts) -> None:
    """Writes ``availability.csv``: ``counts[i]`` clients online at simulated hour ``hours[i]``."""
    if not self.enabled:
      return
    hours, counts = np.asarray(hours), np.asarray(counts)
    if hours.shape != counts.shape or hours.ndim != 1:
      raise ValueError(f"hours and counts must be 1-D of one length, got {hours.shape} and {counts.shape}")
    if np.all(np.mod(hours, 1) == 0):
      hours = hours.astype(np.int64)
    lines = [AVAILABILITY_HEADER] + [f"{_fmt(h)},{int(c)}" for h, c in zip(hours.tolist(), counts)]
    _write_text_atomic(self.workdir / AVAILABILITY, "\n".join(lines) + "\n")

  def write_round(self, record: dict, client_durations: np.ndarray | None = None) -> None:
    """Appends one round's metrics line and its TensorBoard scalars, then flushes both.

    Args:
      record: the round's metrics (keys in the module docstring); ``round`` is required and
        must exceed the previous round written.
      client_durations: simulated seconds each of the round's clients took, for the
        ``Train/client_duration`` histogram (non-finite values are left out).
    """
    if not self.enabled:
      return
    r = record.get("round")
    if isinstance(r, bool) or not isinstance(r, (int, np.integer)) or r <= self._last_round:
      raise ValueError(f'record needs an int "round" > {self._last_round} (the last written), got {r!r}')
    self._metrics.write(json.dumps(strict_json(record), default=_json_default, allow_nan=False) + "\n")
    self._metrics.flush()
    self._last_round = int(r)
    if self._events is not None:
      self._write_events(record, client_durations)

  def write_timeline(
    self,
    round: int,
    clients,
    status: Sequence[str] | np.ndarray,  # pylint: disable=redefined-builtin
    start,
    download,
    compute,
    upload,
    finish,
  ) -> None:
    """Appends one row per client of ``round`` to ``timeline.csv`` and flushes.

    Args:
      round: the 1-based round the clients were selected for.
      clients: ``[m]`` client ids.
      status: ``[m]`` status words (`STATUS_NAMES`) or the scheduler's `Status` ints.
      start, download, compute, upload, finish: ``[m]`` simulated times (module docstring).
    """
    if not self.enabled:
      return
    clients = np.asarray(clients, dtype=np.int64).reshape(-1)
    status = np.asarray(status).reshape(-1)
    if status.dtype.kind in "iu":
      if status.size and (status.min() < 0 or status.max() >= len(STATUS_NAMES)):
        raise ValueError(f"status ints must be in [0, {len(STATUS_NAMES)}), got {np.unique(status)}")
      words = [STATUS_NAMES[s] for s in status.tolist()]
    else:
      words = [str(s) for s in status.tolist()]
      unknown = set(words) - set(STATUS_NAMES)
      if unknown:
        raise ValueError(f"unknown status {sorted(unknown)}; expected one of {STATUS_NAMES}")
    times = [np.asarray(t, dtype=np.float64).reshape(-1) for t in (start, download, compute, upload, finish)]
    m = clients.size
    if len(words) != m or any(t.size != m for t in times):
      raise ValueError(f"timeline arrays must all have {m} entries, got {[len(words)] + [t.size for t in times]}")
    r = int(round)
    rows = zip(clients.tolist(), words, *(t.tolist() for t in times))
    self._timeline.write("".join(f"{r},{c},{s},{a!r},{b!r},{d!r},{e!r},{f!r}\n" for c, s, a, b, d, e, f in rows))
    self._timeline.flush()

  def write_summary(self, summary: dict) -> None:
    """Writes ``summary.json`` (see `summarize`)."""
    if self.enabled:
      _write_json_atomic(self.workdir / SUMMARY, summary, default=_json_default)

  def close(self) -> None:
    for f in (self._metrics, self._timeline, self._events):
      if f is not None:
        f.close()
    self._metrics = self._timeline = self._events = None

  def __enter__(self) -> RunWriter:
    return self

  def __exit__(self, *exc) -> None:
    self.close()

  def _write_events(self, record: dict, client_durations) -> None:
    from tensorboardX import summary as tbsummary  # pylint: disable=g-import-not-at-top
    from tensorboardX.proto import event_pb2  # pylint: disable=g-import-not-at-top

    r = int(record["round"])
    wall = time.time()

    def emit(summ, step):
      self._events.write_event(event_pb2.Event(wall_time=wall, step=step, summary=summ))

    # Round-stepped events come first in each round: resume truncation relies on it to tell
    # which round a Test/time_to_accuracy event (stepped in minutes) belongs to.
    for tag, value in ((ROUND_DURATION, record.get("round_duration_s")), (ROUND_TO_LOSS, record.get("train_loss"))):
      if value is not None:
        emit(tbsummary.scalar(tag, float(value)), r)
    if client_durations is not None:
      d = np.asarray(client_durations, dtype=np.float64).reshape(-1)
      d = d[np.isfinite(d)]
      if d.size:
        emit(tbsummary.histogram(CLIENT_DURATION, d, bins="auto", max_bins=64), r)
    for tag, key in PRIVACY_SCALARS:
      if record.get(key) is not None:
        emit(tbsummary.scalar(tag, float(record[key])), r)
    ev = record.get("eval")
    if isinstance(ev, dict):
      if ev.get("loss") is not None:
        emit(tbsummary.scalar(TEST_ROUND_TO_LOSS, float(ev["loss"])), r)
      if ev.get("accuracy") is not None:
        emit(tbsummary.scalar(ROUND_TO_ACCURACY, float(ev["accuracy"])), r)
        if record.get("clock_s") is not None:
          emit(tbsummary.scalar(TIME_TO_ACCURACY, float(ev["accuracy"])), int(record["clock_s"] // 60))
    personal = record.get("eval_personal")
    if isinstance(personal, dict):
      for key in ("accuracy", "client_accuracy_p10", "client_accuracy_p50", "client_accuracy_p90"):
        if personal.get(key) is not None:
          tag = PERSONAL_ROUND_TO_ACCURACY if key == "accuracy" else f"Test/personal_{key}"
          emit(tbsummary.scalar(tag, float(personal[key])), r)
    self._events.flush()


def check_resumable(workdir, last_round: int) -> None:
  """Raises ValueError (naming the file) unless the outputs can be cut back to ``last_round``:
  ``metrics.jsonl`` readable and reaching it, ``timeline.csv`` with its header. Changes nothing."""
  workdir = pathlib.Path(workdir)
  path = workdir / METRICS
  records = read_metrics(workdir) if path.exists() else []
  have = records[-1]["round"] if records else 0
  if have < last_round:
    raise ValueError(
      f"{path} ends at round {have}, but the run resumes after round {last_round}: "
      "a round's outputs must be written before its checkpoint is saved"
    )
  timeline = workdir / TIMELINE
  if timeline.exists() and timeline.read_text(encoding="utf-8").strip():
    first = timeline.read_text(encoding="utf-8").split("\n", 1)[0]
    if first.strip() != TIMELINE_HEADER:
      raise ValueError(f"{timeline}:1: expected the header {TIMELINE_HEADER!r}")


def strict_json(obj):
  """``obj`` with every non-finite float (NumPy's too) replaced by None: strict JSON."""
  if isinstance(obj, dict):
    return {k: strict_json(v) for k, v in obj.items()}
  if isinstance(obj, (list, tuple)):
    return [strict_json(v) for v in obj]
  if isinstance(obj, (float, np.floating)):
    return float(obj) if math.isfinite(obj) else None
  if isinstance(obj, np.ndarray):
    return strict_json(obj.tolist())
  return obj


def read_metrics(workdir) -> list[dict]:
  """Reads ``metrics.jsonl`` as a list of per-round dicts.

  A last line cut short by a killed writer is skipped. Raises FileNotFoundError if the file is
  missing, ValueError (with file and line number) for a malformed line.
  """
  path = pathlib.Path(workdir) / METRICS
  records = []
  for lineno, line, complete in _lines(path):
    if not line.strip():
      continue
    try:
      rec = json.loads(line)
    except json.JSONDecodeError as e:
      if not complete:
        break
      raise ValueError(f"{path}:{lineno}: malformed metrics line: {e}") from None
    if not isinstance(rec, dict) or not isinstance(rec.get("round"), int):
      raise ValueError(f'{path}:{lineno}: a metrics line must be a JSON object with an int "round"')
    records.append(rec)
  return records


def read_timeline(workdir) -> dict[str, np.ndarray]:
  """Reads ``timeline.csv`` as columns: ``round``, ``client`` (int64), ``status`` (str),
  ``start`` ... ``finish`` (float64). A last row cut short by a killed writer is skipped."""
  path = pathlib.Path(workdir) / TIMELINE
  lines = [line for _, line, complete in _lines(path) if complete]
  if not lines or lines[0].strip() != TIMELINE_HEADER:
    raise ValueError(f"{path}:1: expected the header {TIMELINE_HEADER!r}")
  if len(lines) == 1:
    table = np.zeros(0, _TIMELINE_DTYPE)
  else:
    try:
      table = np.loadtxt(io.StringIO("".join(lines[1:])), dtype=_TIMELINE_DTYPE, delimiter=",", ndmin=1)
    except ValueError as e:
      raise ValueError(
        f"{path}: malformed timeline row ({e}; line numbers count from the row after the header)"
      ) from None
  return {name: table[name] for name in TIMELINE_COLUMNS}


def read_availability(workdir) -> tuple[np.ndarray, np.ndarray]:
  """Reads ``availability.csv`` as ``(hours, online)`` arrays."""
  path = pathlib.Path(workdir) / AVAILABILITY
  lines = [line for _, line, complete in _lines(path) if complete]
  if not lines or lines[0].strip() != AVAILABILITY_HEADER:
    raise ValueError(f"{path}:1: expected the header {AVAILABILITY_HEADER!r}")
  try:
    table = np.loadtxt(io.StringIO("".join(lines[1:])), delimiter=",", ndmin=2).reshape(-1, 2)
  except ValueError as e:
    raise ValueError(f"{path}: malformed row ({e})") from None
  return table[:, 0], table[:, 1].astype(np.int64)


def read_scalars(workdir) -> dict[str, list[tuple[int, float]]]:
  """Reads the scalar TensorBoard events of a run: ``{tag: [(step, value), ...]}`` in file order.

  Records are checked against their CRCs; a torn last record is ignored.
  """
  out: dict[str, list[tuple[int, float]]] = {}
  for path in sorted((pathlib.Path(workdir) / TENSORBOARD).glob(_EVENT_GLOB)):
    for event in _read_events(path):
      for v in event.summary.value:
        if v.WhichOneof("value") == "simple_value":
          out.setdefault(v.tag, []).append((int(event.step), float(v.simple_value)))
  return out


def summarize(
  records: list[dict],
  *,
  target_accuracy: float | None = None,
  wall_s: float | None = None,
  clients_trained: int | None = None,
) -> dict:
  """The run's summary from its per-round records (as `read_metrics` returns them).

  Args:
    records: per-round metrics, in round order.
    target_accuracy: the accuracy whose first reaching is reported (simulated hours and round).
    wall_s: wall seconds the run took (default: the last record's ``wall_s``).
    clients_trained: client updates trained (default: the sum of ``aggregated``).

  Returns:
    A JSON-ready dict: ``rounds``, ``simulated_hours``, ``wall_s``, ``clients_trained``,
    ``clients_per_s``, ``best_accuracy`` (+ ``_round``), ``final_accuracy`` (+ ``_round``),
    ``final_eval_loss``, ``final_train_loss``, ``target_accuracy``, ``time_to_target_hours``
    and ``time_to_target_round`` (None when not reached), ``bytes_down``, ``bytes_up``; when the
    last evaluation has them, ``final_client_accuracy_p10``/``_p50``/``_p90`` and
    ``final_personal`` (``eval_personal``'s accuracy and quantiles in that round).
  """
  last = records[-1] if records else {}
  if wall_s is None:
    wall_s = last.get("wall_s")
  if clients_trained is None:
    clients_trained = int(sum(r.get("aggregated") or 0 for r in records))
  evals = [(r, r["eval"]) for r in records if isinstance(r.get("eval"), dict) and _finite(r["eval"].get("accuracy"))]
  best = max(evals, key=lambda re: re[1]["accuracy"], default=None)  # first of ties
  reached = None
  if target_accuracy is not None:
    reached = next((r for r, ev in evals if ev["accuracy"] >= target_accuracy), None)
  train = [r["train_loss"] for r in records if _finite(r.get("train_loss"))]
  nonfinite_rounds = sum(1 for r in records if (r.get("trained") or 0) > 0 and r.get("train_loss", 0) is None)
  return {
    "rounds": int(last.get("round", 0)),
    "simulated_hours": float(last.get("clock_s", 0.0)) / 3600.0,
    "wall_s": None if wall_s is None else float(wall_s),
    "clients_trained": int(clients_trained),
    "clients_per_s": clients_trained / wall_s if wall_s else None,
    "best_accuracy": best[1]["accuracy"] if best else None,
    "best_accuracy_round": best[0]["round"] if best else None,
    "final_accuracy": evals[-1][1]["accuracy"] if evals else None,
    "final_accuracy_round": evals[-1][0]["round"] if evals else None,
    "final_eval_loss": evals[-1][1].get("loss") if evals else None,
    "final_train_loss": train[-1] if train else None,
    "target_accuracy": target_accuracy,
    "time_to_target_hours": reached["clock_s"] / 3600.0 if reached else None,
    "time_to_target_round": reached["round"] if reached else None,
    "bytes_down": int(sum(r.get("bytes_down") or 0 for r in records)),
    "bytes_up": int(sum(r.get("bytes_up") or 0 for r in records)),
    **({"final_epsilon": last["epsilon"]} if "epsilon" in last else {}),
    "nonfinite_clients": int(sum(r.get("nonfinite") or 0 for r in records)),
    "nonfinite_rounds": int(nonfinite_rounds),
    "diverged_round": next(
      (r["round"] for r in records if isinstance(r.get("eval"), dict) and r["eval"].get("diverged")), None
    ),
    **_final_distributions(evals),
  }


QUANTILES = ("client_accuracy_p10", "client_accuracy_p50", "client_accuracy_p90")


def _final_distributions(evals: list) -> dict:
  """The last evaluation's per-client accuracy quantiles (``final_client_accuracy_p10`` ...) and,
  with ``eval_personal``, that round's personalized evaluation (``final_personal``: accuracy and
  quantiles); keys absent when the run has none."""
  if not evals:
    return {}
  record, ev = evals[-1]
  out = {f"final_{k}": ev[k] for k in QUANTILES if _finite(ev.get(k))}
  personal = record.get("eval_personal")
  if isinstance(personal, dict) and _finite(personal.get("accuracy")):
    out["final_personal"] = {k: personal[k] for k in ("accuracy", "loss", *QUANTILES) if k in personal}
  return out


# ---------------------------------------------------------------------------------------------
# Helpers.


def _finite(x) -> bool:
  return isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x)


def _fmt(x) -> str:
  return repr(x) if isinstance(x, float) else str(x)


def _json_default(o: Any):
  if isinstance(o, np.generic):
    return strict_json(o.item())
  if hasattr(o, "__array__"):  # NumPy (or JAX, already on the host) arrays
    return strict_json(np.asarray(o).tolist())
  raise TypeError(f"{type(o).__name__} is not JSON serializable")


def _json_default_str(o: Any):
  try:
    return _json_default(o)
  except TypeError:
    return str(o)


def _write_text_atomic(path: pathlib.Path, text: str) -> None:
  tmp = path.with_name(f".{path.name}.tmp")  # hidden: never matches a reader's glob
  tmp.write_text(text, encoding="utf-8")
  os.replace(tmp, path)


def _write_json_atomic(path: pathlib.Path, obj, *, default) -> None:
  _write_text_atomic(path, json.dumps(strict_json(obj), indent=2, default=default, allow_nan=False) + "\n")


def _lines(path: pathlib.Path) -> Iterator[tuple[int, str, bool]]:
  """Yields ``(lineno, line, complete)``; ``complete`` is False for a last line with no newline."""
  if not path.is_file():
    raise FileNotFoundError(f"{path} not found (is {path.parent} a run directory?)")
  with open(path, encoding="utf-8") as f:
    for lineno, line in enumerate(f, 1):
      yield lineno, line, line.endswith("\n")


def _truncate_lines(path: pathlib.Path, keep_line) -> None:
  """Rewrites ``path`` keeping the complete lines ``keep_line(lineno, line)`` accepts."""
  kept = [line for lineno, line, complete in _lines(path) if complete and keep_line(lineno, line)]
  _write_text_atomic(path, "".join(kept))


def _truncate_metrics(path: pathlib.Path, last_round: int) -> None:
  if not path.exists():
    path.write_text("")
  records = read_metrics(path.parent)
  have = records[-1]["round"] if records else 0
  if have < last_round:
    raise ValueError(
      f"{path} ends at round {have}, but the run resumes after round {last_round}: "
      "a round's outputs must be written before its checkpoint is saved"
    )

  def keep(lineno, line):
    try:
      return json.loads(line)["round"] <= last_round
    except (json.JSONDecodeError, KeyError, TypeError):
      raise ValueError(f"{path}:{lineno}: malformed metrics line") from None

  _truncate_lines(path, lambda n, line: bool(line.strip()) and keep(n, line))


def _truncate_timeline(path: pathlib.Path, last_round: int) -> None:
  if not path.exists() or not path.read_text(encoding="utf-8").strip():
    path.write_text(TIMELINE_HEADER + "\n")
    return

  def keep(lineno, line):
    if lineno == 1:
      if line.strip() != TIMELINE_HEADER:
        raise ValueError(f"{path}:1: expected the header {TIMELINE_HEADER!r}")
      return True
    try:
      return int(line.split(",", 1)[0]) <= last_round
    except ValueError:
      raise ValueError(f"{path}:{lineno}: malformed timeline row") from None

  _truncate_lines(path, keep)


def _read_records(path: pathlib.Path) -> Iterator[bytes]:
  """TFRecord framing: u64 length, u32 masked CRC of it, data, u32 masked CRC of the data."""
  from tensorboardX.record_writer import masked_crc32c  # pylint: disable=g-import-not-at-top

  data = path.read_bytes()
  pos = 0
  while pos + 12 <= len(data):
    header = data[pos : pos + 8]
    (length,), (header_crc,) = struct.unpack("<Q", header), struct.unpack("<I", data[pos + 8 : pos + 12])
    end = pos + 12 + length + 4
    if header_crc != masked_crc32c(header) or end > len(data):
      return  # a torn tail: the writer was killed mid-record
    body = data[pos + 12 : pos + 12 + length]
    if struct.unpack("<I", data[end - 4 : end])[0] != masked_crc32c(body):
      return
    yield body
    pos = end


def _read_events(path: pathlib.Path):
  from tensorboardX.proto import event_pb2  # pylint: disable=g-import-not-at-top

  for body in _read_records(path):
    yield event_pb2.Event.FromString(body)


def _truncate_events(path: pathlib.Path, last_round: int) -> None:
  """Keeps the events of rounds ``<= last_round`` (and non-summary events) of one event file."""
  from tensorboardX.proto import event_pb2  # pylint: disable=g-import-not-at-top
  from tensorboardX.record_writer import masked_crc32c  # pylint: disable=g-import-not-at-top

  out = bytearray()
  current = 0  # round of the last round-stepped event: Test/time_to_accuracy is stepped in minutes
  for body in _read_records(path):
    event = event_pb2.Event.FromString(body)
    tags = {v.tag for v in event.summary.value}
    if tags and tags != {TIME_TO_ACCURACY}:
      current = event.step
    if tags and current > last_round:
      continue
    header = struct.pack("<Q", len(body))
    out += header + struct.pack("<I", masked_crc32c(header)) + body + struct.pack("<I", masked_crc32c(body))
  tmp = path.with_name(f".{path.name}.tmp")
  tmp.write_bytes(bytes(out))
  os.replace(tmp, path)


def summary_lines(summary: dict, workdir) -> list[str]:
  """A finished run's summary in a few human-readable lines."""

  def pct(x):
    return "n/a" if x is None else f"{x:.3f}"

  lines = [
    f"final accuracy {pct(summary.get('final_accuracy'))} (round {summary.get('final_accuracy_round')}), "
    f"best {pct(summary.get('best_accuracy'))} (round {summary.get('best_accuracy_round')})",
  ]

  def spread(d, prefix=""):
    if d.get(prefix + QUANTILES[0]) is None:
      return ""
    return ", per-client p10/p50/p90 " + "/".join(pct(d.get(prefix + q)) for q in QUANTILES)

  personal = summary.get("final_personal")
  if personal:  # eval_personal: each client's own model, next to the global one
    lines.append(f"global model: accuracy {pct(summary.get('final_accuracy'))}{spread(summary, 'final_')}")
    lines.append(f"personalized: accuracy {pct(personal.get('accuracy'))}{spread(personal)}")
  target = summary.get("target_accuracy")
  if target:
    if summary.get("time_to_target_hours") is not None:
      lines.append(
        f"target accuracy {target:g} reached after {summary['time_to_target_hours']:.2f} simulated hours "
        f"(round {summary['time_to_target_round']})"
      )
    else:
      lines.append(f"target accuracy {target:g} not reached")
  wall = summary.get("wall_s")
  lines.append(
    f"{summary.get('rounds')} rounds, {summary.get('simulated_hours', 0):.2f} simulated hours, "
    f"{summary.get('clients_trained')} clients trained, wall time {wall:.1f} s"
    if wall is not None
    else f"{summary.get('rounds')} rounds"
  )
  lines.append(f"plots: {pathlib.Path(workdir) / 'plots'}/  summary: {pathlib.Path(workdir) / 'summary.json'}")
  return lines
