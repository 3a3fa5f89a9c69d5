"""``train_and_evaluate(config, workdir)``: the round loop that joins the scheduler and the engine.

Per synchronous round: the planner picks and times the clients on the simulated clock -> the
cohort of the clients whose updates count is gathered from the dataset (participating clients
only; with ``system.stragglers='partial'``, FedProx-style, stragglers add the steps they
completed) -> the algorithm runs it on the engine and updates the server -> per-client losses go
back to the selection policy (Oort) -> metrics, timeline, evaluation, checkpoints.

Asynchronous (FedBuff) runs: each plan is the cohort of clients that started from the current
model version; they are trained from it at once, their staleness-weighted updates are added to
the buffers of the server steps they arrive in, and the current step is applied: every update of
its buffer has been trained by then.

One seed fixes everything; a resumed run (``resume=True``) continues from the newest checkpoint
and produces the same metrics and parameters as a run that never stopped.
"""

import dataclasses
import json
import math
import pathlib
import shutil
import time
import warnings
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from fedjaxscale.algorithms import Shared
from fedjaxscale.data import gather_cohort, plan_shapes
from fedjaxscale.engine import Aggregate, Evaluator
from fedjaxscale.scheduler import Status
from fedjaxscale.state import StoreError
from fedjaxscale.training import client_states, compilation, outputs, plots
from fedjaxscale.training import workdir as run_dir
from fedjaxscale.training.checkpoint import Checkpointer, CheckpointError
from fedjaxscale.training.distributed import barrier, is_lead
from fedjaxscale.training.progress import Progress
from fedjaxscale.training.setup import (
  ConfigError,
  RunParts,
  build,
  check_config,
  model_bytes,
  online_counts,
  reopen_data,
)

RUN_FILES = (
  "config.json",
  "metrics.jsonl",
  "timeline.csv",
  "availability.csv",
  "summary.json",
  "engine.json",
  "tensorboard",
  "plots",
  "checkpoints",
  "data",
  "client_states",
)


def holds_run(workdir: pathlib.Path) -> bool:
  return any((workdir / name).exists() for name in ("config.json", "metrics.jsonl", "checkpoints"))


def train_and_evaluate(
  config, workdir, *, resume: bool = False, overwrite: bool = False, show_progress: bool = True
) -> dict[str, Any]:
  """Runs the experiment ``config`` in ``workdir`` and returns its summary.

  Args:
    config: an ``ml_collections.ConfigDict`` (see ``experiments/configs/``).
    workdir: where outputs, checkpoints and generated data go.
    resume: continue the run in ``workdir`` from its newest checkpoint.
    overwrite: replace a run that ``workdir`` holds.
    show_progress: a progress bar (on a terminal) or periodic log lines.

  Returns:
    The run's summary (also written to ``workdir/summary.json``).

  Raises:
    ConfigError: a config (or data, traces, checkpoint) that cannot run, a workdir holding a
      run without ``resume`` or ``overwrite``, a resume whose config differs from the run's in
      more than `workdir.RESUMABLE_FIELDS`, or a workdir another process is running in (it
      holds ``.fedjaxscale.lock``). Nothing is written or deleted then.
  """
  workdir = pathlib.Path(workdir).resolve()
  check_config(config)  # before the lock: a bad config needs no workdir
  # Before anything compiles (JAX fixes the persistent cache at the process's first compilation)
  # and before a run is replaced.
  try:
    cache = compilation.enable(config.engine.compilation_cache, config.engine.compilation_cache_dir)
  except OSError as e:
    raise ConfigError(
      f"config.engine.compilation_cache_dir: cannot use {e.filename or ''} as a cache: {e.strerror}"
    ) from e
  created = not workdir.exists()
  lock = None
  try:
    if is_lead():  # one lock per run, taken by the process that writes
      workdir.mkdir(parents=True, exist_ok=True)
      lock = run_dir.WorkdirLock(workdir)
      try:
        lock.acquire()
      except run_dir.WorkdirBusy as e:
        lock = None
        raise ConfigError(str(e)) from None
    run = _prepare(config, workdir, resume=resume, overwrite=overwrite, show_progress=show_progress, cache=cache)
  except BaseException:
    if lock is not None:  # only the holder cleans up: a refused second command touches nothing
      run_dir.remove_staged(workdir)
      if created:
        shutil.rmtree(workdir, ignore_errors=True)  # (the lock file with it, while still held)
      lock.release()
    raise
  drawer = run.drawer = plots.Drawer() if config.plots and is_lead() else None
  try:
    return run.run()
  finally:
    if drawer is not None:
      drawer.close()
    if lock is not None:
      lock.release()


def _prepare(
  config, workdir: pathlib.Path, *, resume: bool, overwrite: bool, show_progress: bool, cache: dict | None = None
) -> "_Run":
  """Checks everything (config, data, traces, the checkpoint to resume), and only then touches
  the workdir: removes the run being overwritten and puts newly generated data in place."""
  existing = holds_run(workdir)
  if existing and not (resume or overwrite):
    raise ConfigError(f"{workdir} already holds a run; pass --resume to continue it or --overwrite to replace it")
  if resume and not existing:
    raise ConfigError(f"--resume: {workdir} holds no run to resume")
  if resume:
    run_dir.check_resume_config(json.loads(config.to_json_best_effort()), workdir, ConfigError)
  parts = build(config, workdir, resume=resume)
  run = _Run(
    config, workdir, parts, resume, show_progress, cache
  )  # restores (and checks) the checkpoint; writes nothing
  try:
    if resume and is_lead():
      try:
        outputs.check_resumable(workdir, run.round)
      except ValueError as e:
        raise ConfigError(f"--resume: {e}; start the run again with --overwrite") from None
    _commit(workdir, parts, resume=resume, overwrite=overwrite, existing=existing)
    run.start_writing()
  except BaseException:
    run.close()
    raise
  return run


def _commit(workdir: pathlib.Path, parts: RunParts, *, resume: bool, overwrite: bool, existing: bool) -> None:
  if is_lead():
    if overwrite and existing and not resume:
      for name in RUN_FILES:
        path = workdir / name
        if name == "data" and not parts.staged:
          continue  # the old run's data matches the new config: keep it
        shutil.rmtree(path) if path.is_dir() else path.unlink(missing_ok=True)
    run_dir.commit_data(workdir)
  if parts.staged:
    barrier("fedjaxscale:data-committed")
    parts.train, parts.test = reopen_data(workdir)


def to_model_space(aggregate: Aggregate, start_params) -> Aggregate:
  """FedScale's FedBuff averages client models, not deltas. A delta is ``start - client``, so the
  client model is ``start - delta``; the buffer holds ``sum w (delta - start)`` (a sum of negated
  models) until its step, where `from_model_space` adds ``W * current``: the server's
  ``current - sum / W`` (SGD at lr 1) is then the weighted mean of the client models."""
  w = aggregate.weight_sum
  return aggregate._replace(
    update_sum=jax.tree.map(lambda u, p: u - w.astype(u.dtype) * p, aggregate.update_sum, start_params)
  )


def from_model_space(buffer: Aggregate, current_params) -> Aggregate:
  """The buffer of `to_model_space` as deltas from the current server model."""
  w = buffer.weight_sum
  return buffer._replace(
    update_sum=jax.tree.map(lambda u, p: u + w.astype(u.dtype) * p, buffer.update_sum, current_params)
  )


def timeline_ends(plan) -> np.ndarray:
  """A sync plan's upload/finish column: the planned finish, or for ``dropped`` rows the time the
  client went offline. (A straggler that goes offline after the round ended keeps its planned
  finish: it left when it was no longer waited for.)"""
  dropped = plan.status == Status.DROPPED
  return np.where(dropped, np.minimum(plan.finish, plan.drop_time), plan.finish)


def plan_members(plan, config, parts: RunParts) -> tuple[np.ndarray, np.ndarray]:
  """The clients a synchronous plan trains and their local steps: the aggregated ones, and with
  ``system.stragglers='partial'`` the stragglers with the whole steps they completed."""
  members = plan.aggregated
  max_steps = parts.full_steps[members]
  if config.system.stragglers == "partial":
    # FedProx keeps the work stragglers finished by the round's end instead of dropping it.
    late = (plan.status == Status.STRAGGLER) & (plan.completed_fraction > 0)
    done = np.floor(plan.completed_fraction[late] * parts.full_steps[plan.clients[late]]).astype(np.int64)
    keep = done > 0
    members = np.concatenate([members, plan.clients[late][keep]])
    max_steps = np.concatenate([max_steps, done[keep]])
  return members, max_steps


def round_cohort(run, members, *, max_steps=None, weights=None, seed_offset=0):
  """The cohort of ``members`` in ``run``'s current round (`_Run`'s, and ``stacked_run``'s group's):
  the config's local work and batch size, seeds from the run's seed and round, the run's planned
  cohort shapes (``run.p``, ``run.config``, ``run.round``, ``run.engine``, ``run.shapes``)."""
  local = run.config.local
  mode = {"local_steps": local.local_steps} if local.local_steps > 0 else {"local_epochs": local.local_epochs}
  seed = (run.config.seed * 1_000_003 + run.round) * 1_000_003 + seed_offset
  return gather_cohort(
    run.p.train,
    members,
    local.batch_size,
    **mode,
    seed=seed,
    weights=weights,
    max_steps=max_steps,
    lane_multiple=run.engine.client_multiple,
    shapes=run.shapes,
  )


def _loss_or_none(loss, none_finite: bool):
  """A round's training loss, or None where no client gave a finite one (per point for a stacked
  group, whose loss is an [H] array)."""
  if np.ndim(loss):
    return [_loss_or_none(float(x), none_finite) for x in loss]
  return None if none_finite or not np.isfinite(loss) else loss


def sync_round(run, apply):
  """One synchronous round up to its record: `_Run`'s, and ``stacked_run``'s for a stacked group.

  Plans the round on the simulated clock, gathers the cohort of `plan_members`, trains it with
  ``apply(state, cohort, members, key) -> (state, diagnostics)``, and reports the clients' losses
  to the selection policy. Updates ``run.state`` and ``run.clients_trained``.

  Args:
    run: what the round reads: ``p`` (`RunParts`), ``config``, ``round``, ``key``, ``state``,
      ``up_bytes``, ``clients_trained``, ``_tick(phase, since)`` and what `round_cohort` reads.
    apply: trains a cohort from ``state``.

  Returns:
    ``(record, diagnostics, plan, members)``: the round's metrics record (no round number, eval or
    timing yet; ``train_loss`` is a list per point when the diagnostics hold one loss per point),
    the algorithm's diagnostics (None when nobody finished), the plan and the clients trained.
  """
  plan, members, max_steps, record = plan_round(run)
  if not len(members):
    skip_round(run, plan)
    return record, None, plan, members
  tic = time.perf_counter()
  cohort = round_cohort(run, members, max_steps=max_steps)
  tic = run._tick("gather", tic)
  run.state, diagnostics = apply(run.state, cohort, members, jax.random.fold_in(run.key, run.round))
  finish_round(run, record, diagnostics, plan, members, tic)
  return record, diagnostics, plan, members


def skip_round(run, plan) -> None:
  """A round in which nobody finished: the clock moved, the model did not."""
  run.state = run.state._replace(round=run.state.round + 1)
  run.p.planner.report(plan, np.zeros(0))


def plan_round(run):
  """A synchronous round's plan, the clients it trains (with their local steps) and the start of
  its record: ``(plan, members, max_steps, record)``."""
  p, config = run.p, run.config
  tic = time.perf_counter()
  plan = p.planner.plan_round()
  run._tick("plan", tic)
  members, max_steps = plan_members(plan, config, p)
  record = {
    "clock_s": float(plan.end_time),
    "round_duration_s": float(plan.duration),
    "selected": int(len(plan.clients)),
    "aggregated": int(len(plan.aggregated)),
    "stragglers": int(np.sum(plan.status == Status.STRAGGLER)),
    "dropped": int(np.sum(plan.status == Status.DROPPED)),
    "bytes_down": model_bytes(p.num_params) * int(len(plan.clients)),
    "bytes_up": run.up_bytes * int(len(members)),
    "trained": int(len(members)),
  }
  if plan.short:
    record["note"] = plan.message
  return plan, members, max_steps, record


def finish_round(run, record, diagnostics, plan, members, tic: float) -> None:
  """Completes a trained round's record from its diagnostics (waiting for them: the engine's time
  runs from ``tic``) and reports the clients' losses to the selection policy."""
  n = len(plan.aggregated)
  finite = ~np.asarray(diagnostics["client_nonfinite"][:n], bool)  # waits for the round's results
  loss_sq = np.asarray(diagnostics["client_loss_sq"][:n])
  run._tick("engine", tic)
  if loss_sq.ndim == 2:  # a stacked group's [clients, H]: point 0's (only uniform selection, which ignores them)
    loss_sq = loss_sq[:, 0]
  # Non-finite clients were left out of the aggregate; they are left out of the feedback too.
  run.p.planner.report(plan, loss_sq, finite=finite)
  record.update(
    train_loss=_loss_or_none(diagnostics["train_loss"], diagnostics["num_nonfinite"] == len(members)),
    nonfinite=diagnostics["num_nonfinite"],
    padding_efficiency=diagnostics["padding_efficiency"],
  )
  if "states_stored" in diagnostics:  # stateful algorithms: clients holding a state so far
    record["states_stored"] = diagnostics["states_stored"]
  run.clients_trained += len(members)
  for key in ("clip_norm", "clipped_fraction", "noise_std"):
    if key in diagnostics:
      record[key] = diagnostics[key]


def _all_finite(tree) -> bool:
  return all(bool(jnp.all(jnp.isfinite(x))) for x in jax.tree.leaves(tree) if jnp.issubdtype(x.dtype, jnp.inexact))


def cohort_sizes(config) -> tuple[range, int]:
  """The numbers of clients a run's cohorts typically have, and the most they can have (what its
  shapes are planned for)."""
  k, s = config.clients_per_round, config.system
  if s.mode == "async":
    # The clients that started on one version and arrive at one server step: about K start on
    # each version, split over the steps they arrive in; never more than are in flight.
    return range(1, k + 1), max(s.max_concurrency, k)
  selected = max(k, math.ceil(s.overcommit * k))
  if s.deadline_s:  # whoever finishes by the deadline
    return range(1, selected + 1), selected
  if s.stragglers == "partial":  # the K first, plus stragglers with partial work
    return range(k, selected + 1), selected
  return range(k, k + 1), k


@dataclasses.dataclass
class _Planned:
  """A round of a block (`_Run._sync_block`): planned and gathered, then trained."""

  plan: Any
  members: np.ndarray
  record: dict
  cohort: Any  # None: nobody finished
  diagnostics: Any = None


class _Run:
  """One run's state between rounds."""

  def __init__(
    self, config, workdir: pathlib.Path, parts: RunParts, resume: bool, show_progress: bool, cache: dict | None = None
  ):
    self.config, self.workdir, self.p = config, workdir, parts
    self.cache = dict(cache or {"enabled": False, "dir": None}, start=compilation.counts())
    self.engine = parts.engine
    self.algorithm = parts.algorithm
    init_key, self.key = jax.random.split(jax.random.key(config.seed))
    self.state = self.algorithm.init(parts.model.init(init_key))
    self.client_states = None
    if client_states.is_stateful(self.algorithm):  # SCAFFOLD, Ditto: a store of per-client states
      self.client_states = client_states.RunStates(
        config, workdir, self.algorithm, parts.model, parts.train.num_clients
      )
    self.evaluator = Evaluator(parts.model, self.engine, config.eval_batch_size)
    self.personal = None
    if config.eval_personal and parts.test is not None:
      self.personal = client_states.PersonalEvaluation(config, parts)
    self.checkpointer = None  # opened by start_writing (or _restore), after an overwritten run is gone
    self.skipped_rounds: list[int] = []  # newer checkpoints that did not restore
    self.round = 0
    self.wall_before = 0.0
    self.clients_trained = 0
    self.pending: dict[int, Aggregate] = {}  # async: buffers of future server steps
    self.queued: list = []  # rounds of a block trained ahead, not yet recorded (`_sync_block`)
    # The cohort shapes of the whole run, fixed now: it compiles at most two programs per shape.
    # Training features stay on the devices when the engine can keep them (only row indices then
    # cross per round); engines without it gather on the host.
    make_resident = getattr(self.engine, "make_resident", None)
    self.resident = bool(make_resident(parts.train.features)) if make_resident is not None else False
    sizes, most = cohort_sizes(config)
    self.shapes = plan_shapes(
      parts.full_steps, sizes, max_clients=most, lane_multiple=self.engine.client_multiple, seed=config.seed
    )
    self.privacy = parts.privacy  # the DP ledger (None without DP)
    self.up_bytes = math.ceil(parts.upload_bits / 8) if parts.upload_bits else model_bytes(parts.num_params)
    self.resume, self.show_progress = resume, show_progress
    self.lead = is_lead()  # in multi-process runs only process 0 writes files
    self.drawer = None  # a plots.Drawer, set by train_and_evaluate
    self.writer = self.progress = None
    self.timings = {"plan": 0.0, "gather": 0.0, "engine": 0.0, "eval": 0.0}
    self._warned_nonfinite = self._warned_diverged = False
    if resume:
      self._restore()

  def start_writing(self) -> None:
    """Opens the outputs (a fresh run's config and availability; a resumed run's files cut back
    to its checkpoint): the first write of the command, after every check has passed."""
    config, lead = self.config, self.lead
    if self.checkpointer is None:
      self.checkpointer = Checkpointer(self.workdir / "checkpoints")
    self.checkpointer.discard(self.skipped_rounds)
    self.writer = outputs.RunWriter(self.workdir, enabled=lead, resume_round=self.round if self.resume else None)
    if not self.resume:
      self.writer.write_config(json.loads(config.to_json_best_effort()))
      hours, counts = online_counts(self.p.traces.availability)
      self.writer.write_availability(hours, counts)
    self.progress = Progress(config.rounds, start_round=self.round, enabled=lead) if self.show_progress else None

  # -- the loop ---------------------------------------------------------------------------------

  def run(self) -> dict[str, Any]:
    config = self.config
    start = time.perf_counter()
    try:
      while self.round < config.rounds:
        record, durations = self._next_round()
        self.round += 1
        record["round"] = self.round
        record["wall_s"] = self.wall_before + time.perf_counter() - start
        if config.eval_every and (self.round % config.eval_every == 0 or self.round == config.rounds):
          diverged = not _all_finite(self.state.params)
          if diverged:  # a non-finite model's "accuracy" is an artefact of argmax over NaNs
            self._warn_diverged()
            if self.p.test is not None:
              record["eval"] = {"accuracy": None, "loss": None, "diverged": True}
          elif self.p.test is not None:
            tic = time.perf_counter()
            record["eval"] = self.evaluator(self.state.params, self.p.test).summary()
            if self.personal is not None:  # each client's own model, next to the global one
              # A key no training round uses (rounds fold client positions, far below 2**31 - 1).
              key = jax.random.fold_in(jax.random.fold_in(self.key, self.round), 2**31 - 1)
              record["eval_personal"] = self.personal(self.state, self.client_states, key, self.round)
            self.timings["eval"] = time.perf_counter() - tic
            if not np.isfinite(record["eval"].get("loss", 0.0)):  # finite but overflowing parameters
              self._warn_diverged()
              record["eval"] = {"accuracy": None, "loss": None, "diverged": True}
          if (
            config.eval_train and not diverged
          ):  # the global objective: the model's loss on every client's training data
            tic = time.perf_counter()
            record["eval_train"] = self.evaluator(self.state.params, self.p.train).metrics
            self.timings["eval"] += time.perf_counter() - tic
        # Wall seconds of this round spent planning (host scheduler), gathering the cohort (host
        # data) and on the engine (device work, waited for through the per-client results).
        # (Like wall_s, these differ between runs of the same seed; everything else is identical.)
        record["timing"] = {f"{k}_s": v for k, v in self.timings.items()}
        self.timings = dict.fromkeys(self.timings, 0.0)
        self.writer.write_round(record, durations)
        if self.progress is not None:
          ev = record.get("eval", {})
          self.progress.update(
            self.round, accuracy=ev.get("accuracy"), loss=record.get("train_loss"), clock_s=record["clock_s"]
          )
        if config.checkpoint_every and (self.round % config.checkpoint_every == 0 or self.round == config.rounds):
          self._save(self.wall_before + time.perf_counter() - start)
      wall = self.wall_before + time.perf_counter() - start
      records = outputs.read_metrics(self.workdir) if self.lead else []
      summary = outputs.summarize(
        records, target_accuracy=config.target_accuracy or None, wall_s=wall, clients_trained=self.clients_trained
      )
      summary["engine"] = self._engine_report()
      summary["upload_bits_per_client"] = int(self.up_bytes * 8)
      if self.privacy is not None:
        summary["privacy"] = self.privacy.summary()
      self.writer.write_summary(summary)
      if self.lead:
        (self.workdir / "engine.json").write_text(json.dumps(summary["engine"], indent=2) + "\n")
        if config.plots:
          if self.drawer is not None:  # train_and_evaluate's child process, matplotlib imported
            self.drawer.draw(self.workdir)
          else:
            plots.make_plots(self.workdir)
      return summary
    finally:
      if self.progress is not None:
        self.progress.close()
      self.close()

  def close(self) -> None:
    if self.writer is not None:
      self.writer.close()
    if self.checkpointer is not None:
      self.checkpointer.close()

  def _next_round(self):
    """The next round's ``(record, durations)``: one of a block of rounds trained as one program
    (`_sync_block`), or a round of its own."""
    if not self.queued and self.config.system.mode == "sync" and (block := self._block_length()) > 1:
      self.queued = self._sync_block(block)
    if self.queued:
      record, durations, self.timings = self.queued.pop(0)
      return record, durations
    return self._sync_round() if self.config.system.mode == "sync" else self._async_step()

  def _block_length(self) -> int:
    """Rounds the next block trains as one program (``engine.rounds_per_call``): up to the next
    evaluation, checkpoint or the end, so those see the state of a round boundary; 1 where the
    rounds cannot be planned ahead (a selection that learns from training, client states, DP and
    its ledger, personal evaluation) or the algorithm offers no ``apply_rounds``."""
    c = self.config
    if (
      c.engine.rounds_per_call <= 1
      or getattr(self.algorithm, "apply_rounds", None) is None
      or c.system.selection != "random"
      or self.client_states is not None
      or self.privacy is not None
      or self.personal is not None
    ):
      return 1
    n = min(c.engine.rounds_per_call, c.rounds - self.round)
    for every in (c.eval_every, c.checkpoint_every):
      if every:
        n = min(n, every - self.round % every)
    return n

  def _sync_round(self):
    record, diagnostics, plan, members = sync_round(self, self._train)
    return self._round_outputs(self.round, record, diagnostics, plan, members)

  def _sync_block(self, n: int) -> list:
    """``n`` synchronous rounds planned and gathered ahead (uniform selection does not depend on
    training), trained by ``apply_rounds`` as one compiled program (rounds in which nobody
    finished split the block), then recorded round by round as `_sync_round` records them.

    Returns ``[(record, durations, timings)]``, each round's share of the block's timings.
    """
    base = self.round
    rounds = []
    for i in range(n):
      self.round = base + i  # round_cohort seeds the round's shuffling from it
      plan, members, max_steps, record = plan_round(self)
      cohort = None
      if len(members):
        tic = time.perf_counter()
        cohort = round_cohort(self, members, max_steps=max_steps)
        self._tick("gather", tic)
      rounds.append(_Planned(plan, members, record, cohort))
    self.round = base
    tic = time.perf_counter()
    i = 0
    while i < n:
      if rounds[i].cohort is None:  # nobody finished
        skip_round(self, rounds[i].plan)
        i += 1
        continue
      j = next((t for t in range(i, n) if rounds[t].cohort is None), n)  # a run of trained rounds
      keys = [jax.random.fold_in(self.key, base + t) for t in range(i, j)]
      self.state, diagnostics = self.algorithm.apply_rounds(self.state, [r.cohort for r in rounds[i:j]], keys)
      for r, d in zip(rounds[i:j], diagnostics):
        r.diagnostics = d
      i = j
    out = []
    for i, r in enumerate(rounds):
      if r.diagnostics is not None:
        finish_round(self, r.record, r.diagnostics, r.plan, r.members, tic)
        tic = time.perf_counter()
      out.append(self._round_outputs(base + i, r.record, r.diagnostics, r.plan, r.members))
    share = {k: v / n for k, v in self.timings.items()}
    return [(record, durations, dict(share)) for record, durations in out]

  def _round_outputs(self, round_index: int, record, diagnostics, plan, members):
    """A planned and trained round's warnings, ledger entry and timeline rows (``round_index``
    rounds before it); returns ``(record, durations of the aggregated clients)``."""
    if diagnostics is not None and record["train_loss"] is None:
      self._warn_nonfinite(record["trained"], diagnostics["num_nonfinite"])
    if self.privacy is not None:  # every round is a release (an empty one too), accounted as the run sampled it
      pool = 0 if self.privacy.poisson else int(self.p.traces.availability.online_mask(plan.start_time).sum())
      record["epsilon"] = self.privacy.record_round(pool, plan.clients, members)
    ended = timeline_ends(plan)
    self.writer.write_timeline(
      round_index + 1, plan.clients, plan.status, plan.start, plan.download_end, plan.compute_end, ended, ended
    )
    finished = plan.status == Status.AGGREGATED
    return record, (plan.finish - plan.start)[finished]

  def _train(self, state, cohort, members, key):
    if self.client_states is None:
      return self.algorithm.apply(state, cohort, key)
    return self.client_states.apply(state, cohort, members, key)

  def _async_step(self):
    p = self.p
    tic = time.perf_counter()
    plan = p.planner.next_plan()
    self._tick("plan", tic)
    # The server is at version self.round (one step per record); a host integer, so checking it
    # does not wait for the previous server update to finish on the device.
    if plan.version != self.round:
      raise RuntimeError(f"async plan for model version {plan.version}, server is at {self.round}")
    accepted = plan.status == Status.ACCEPTED
    losses = np.zeros(int(accepted.sum()))
    finite = np.ones(int(accepted.sum()), bool)
    train_loss, trained = [], 0
    for step in np.unique(plan.arrival_step[accepted]):
      group = accepted & (plan.arrival_step == step)
      tic = time.perf_counter()
      cohort = round_cohort(self, plan.clients[group], weights=plan.weight[group], seed_offset=int(step))
      tic = self._tick("gather", tic)
      key = jax.random.fold_in(jax.random.fold_in(self.key, self.round), int(step))
      aggregate, per_client = self.engine.run(
        self.algorithm.client_program, Shared(self.state.params, self.state.round), cohort, key
      )
      self._tick("engine", tic)
      if self.config.system.async_aggregation == "models":
        aggregate = to_model_space(aggregate, self.state.params)
      self.pending[int(step)] = (
        aggregate if int(step) not in self.pending else jax.tree.map(jnp.add, self.pending[int(step)], aggregate)
      )
      losses[np.flatnonzero(group[accepted])] = per_client["loss_sq"]
      finite[np.flatnonzero(group[accepted])] = ~per_client["nonfinite"]
      ok = ~per_client["nonfinite"]
      train_loss.append(np.sum(per_client["loss"][ok] * per_client["examples_trained"][ok]))
      trained += float(np.sum(per_client["examples_trained"][ok]))
      self.clients_trained += int(group.sum())
    p.planner.report(plan, losses, finite=finite)
    nonfinite = int((~finite).sum())
    mean_loss = float(sum(train_loss) / trained) if trained else None
    if mean_loss is not None and not np.isfinite(mean_loss):
      mean_loss = None
    if accepted.any() and mean_loss is None:
      self._warn_nonfinite(int(accepted.sum()), nonfinite)
    buffer = self.pending.pop(plan.version, None)
    tic = time.perf_counter()
    if buffer is None:
      self.state = self.state._replace(round=self.state.round + 1)
    else:
      # Not waited for: the next step's planning and gathering overlap it on the host.
      if self.config.system.async_aggregation == "models":
        buffer = from_model_space(buffer, self.state.params)
      self.state = self.algorithm.server_update(self.state, buffer)
    self._tick("engine", tic)
    # An async plan's finish is the arrival time, or for dropped clients the time they left.
    self.writer.write_timeline(
      self.round + 1,
      plan.clients,
      plan.status,
      plan.start,
      plan.download_end,
      plan.compute_end,
      plan.finish,
      plan.finish,
    )
    record = {
      "clock_s": float(plan.step_time),
      "round_duration_s": float(plan.step_time - plan.start.min()) if len(plan.start) else 0.0,
      "selected": int(len(plan.clients)),
      "aggregated": int(len(plan.step_clients)),
      "stragglers": 0,
      "dropped": int(np.sum(plan.status == Status.DROPPED)),
      "discarded": int(np.sum(plan.status == Status.DISCARDED)),
      "bytes_down": model_bytes(p.num_params) * int(len(plan.clients)),
      "bytes_up": self.up_bytes * int(accepted.sum() + np.sum(plan.status == Status.DISCARDED)),
      "trained": int(accepted.sum()),
      "train_loss": mean_loss,
      "nonfinite": nonfinite,
    }
    return record, (plan.finish - plan.start)[accepted]

  def _engine_report(self) -> dict[str, Any]:
    """What the engine chose and compiled in this process (``engine.json`` and the summary)."""
    engine, now, start = self.engine, compilation.counts(), self.cache["start"]
    return {
      "backend": engine.backend,
      "strategy": self.config.engine.strategy,
      # One dict per compiled shape once the engine measures strategies (``Engine.strategy_choices``).
      "strategy_choices": list(getattr(engine, "strategy_choices", None) or []),
      "resident_data": self.resident,
      "cohort_shapes": [list(s) for s in self.shapes],
      "compile_bound": 2 * len(self.shapes),  # training programs: a packed and an unpacked layout per shape
      "compiles": engine.stats.compiles,
      "lane_shapes": [list(s) for s in sorted(engine.lane_shapes)],
      "compilation_cache": {
        "enabled": self.cache["enabled"],
        "dir": self.cache["dir"],
        **{k: now[k] - start[k] for k in now},
      },
    }

  def _warn_nonfinite(self, trained: int, nonfinite: int) -> None:
    if not self._warned_nonfinite:
      self._warned_nonfinite = True
      warnings.warn(
        f"round {self.round + 1}: none of the {trained} trained clients gave a finite loss ({nonfinite} non-finite "
        "updates were left out of the aggregate); such rounds report train_loss null and are counted in "
        "summary.json's nonfinite_rounds (a smaller algorithm.client_lr usually helps)",
        RuntimeWarning,
        stacklevel=2,
      )

  def _warn_diverged(self) -> None:
    if not self._warned_diverged:
      self._warned_diverged = True
      warnings.warn(
        f"round {self.round}: the global model diverged (non-finite parameters or test loss); its accuracy is not "
        "reported (eval.diverged true, summary.json's diverged_round)",
        RuntimeWarning,
        stacklevel=2,
      )

  def _tick(self, phase: str, since: float) -> float:
    now = time.perf_counter()
    self.timings[phase] += now - since
    return now

  # -- checkpoints ----------------------------------------------------------------------------

  def _save(self, wall_s: float) -> None:
    pending = {str(k): jax.tree.map(np.asarray, jax.device_get(v._asdict())) for k, v in self.pending.items()}
    host = {
      "round": self.round,
      "wall_s": wall_s,
      "clients_trained": self.clients_trained,
      "planner": self.p.planner.state_dict(),
      "lane_shapes": np.asarray(sorted(self.engine.lane_shapes), np.int64).reshape(-1, 2),
      "pending": pending,
      "pending_steps": sorted(int(k) for k in self.pending),
      # The strategies the engine chose by timing: a resumed run adopts them instead of timing
      # again (a different choice would change the last bits of the results).
      "strategy_choices": json.dumps(getattr(self.engine, "strategy_choices", [])),
    }
    if self.client_states is not None:  # the changed chunks are written now; the index goes with the checkpoint
      # Orbax commits a checkpoint in the background. Saving the chunks deletes versions that only
      # checkpoints older than the previous one name, so the previous one must be committed first:
      # otherwise a run killed now would resume from an older checkpoint whose chunks are gone.
      self.checkpointer.wait()
      host["client_states"] = self.client_states.save(self.round)
    if self.privacy is not None:
      host["privacy"] = self.privacy.state_dict()
    self.checkpointer.save(self.round, self.state, host)

  def _restore(self) -> None:
    directory = self.workdir / "checkpoints"
    if not directory.is_dir():
      raise ConfigError(
        f"--resume: {directory} does not exist (the run stopped before its first checkpoint); "
        "start it again with --overwrite"
      )
    self.checkpointer = Checkpointer(directory)
    try:
      self.state, host, self.skipped_rounds = self.checkpointer.restore_latest(self.state)
    except CheckpointError as e:
      self.checkpointer.close()
      self.checkpointer = None
      raise ConfigError(f"--resume: {e}; start the run again with --overwrite") from None
    self.round = int(host["round"])
    self.wall_before = float(host["wall_s"])
    self.clients_trained = int(host["clients_trained"])
    self.p.planner.load_state_dict(host["planner"])
    if self.privacy is not None:
      self.privacy.load_state_dict(host["privacy"])
    self.engine.lane_shapes.update(tuple(int(v) for v in row) for row in host["lane_shapes"])
    if "strategy_choices" in host and hasattr(self.engine, "adopt_strategy_choices"):
      self.engine.adopt_strategy_choices(json.loads(host["strategy_choices"]))
    if self.client_states is not None:
      if "client_states" not in host:
        raise ConfigError(f"--resume: {self.workdir / 'checkpoints'} was written by a run without client states")
      try:
        self.client_states.restore(host["client_states"])
      except StoreError as e:
        raise ConfigError(str(e)) from None
    template = self.state.params
    for k in host.get("pending_steps", []):
      saved = host["pending"][str(k)]
      update = jax.tree.unflatten(jax.tree.structure(template), jax.tree.leaves(saved["update_sum"]))
      self.pending[int(k)] = self.engine.place_replicated(
        Aggregate(update, jnp.asarray(saved["weight_sum"]), jnp.asarray(saved["num_nonfinite"]))
      )
