"""Runs a group of sweep points that share one system plan as one stacked program.

The synchronous round of ``training.loop`` (its `loop.sync_round`: same planner, same cohorts,
same keys, same record fields), with a `stacked.stacked_algorithm` in place of the algorithm, and the results split
into one workdir per point holding the files a run of that point alone writes: ``config.json``,
``metrics.jsonl``, ``timeline.csv``, ``availability.csv``, ``tensorboard/``, ``summary.json``,
``plots/`` and ``checkpoints/`` (each point's own server state, so a point can be resumed or
continued alone with ``fedjaxscale run --resume``). The generated data lives once, in the
sweep's directory. ``wall_s`` and ``timing`` are the group's (shared by its points).

Only ``training.loop`` should be read for the semantics; a test checks that every point of a
stacked group gives the metrics and parameters of its run alone (to 1e-5).
"""

from __future__ import annotations

import json
import pathlib
import time
from typing import Any

import jax
import numpy as np

from fedjaxscale.algorithms import ServerState
from fedjaxscale.data import plan_shapes
from fedjaxscale.engine import Evaluator
from fedjaxscale.scheduler import Status
from fedjaxscale.training import loop, outputs, plots, stacked
from fedjaxscale.training.checkpoint import Checkpointer
from fedjaxscale.training.progress import Progress
from fedjaxscale.training.setup import ConfigError, build, build_algorithm, check_config, model_bytes, online_counts


def run_group(
  configs, workdirs, data_root, hyper: dict[str, list[float]], *, resume: bool, show_progress: bool
) -> list[dict[str, Any]]:
  """Trains the points ``configs`` (equal but for ``hyper``'s fields) together.

  Args:
    configs: one config per point.
    workdirs: one (empty, or resumable) workdir per point.
    data_root: where the group's generated data goes (shared by every point).
    hyper: ``field -> values per point`` for the fields that differ (`stacked.VMAPPABLE`).
    resume: continue every point from its newest checkpoint (they are saved together).
    show_progress: one progress bar for the group.

  Returns:
    The points' summaries, in order.
  """
  for c in configs:
    check_config(c)
  return _Group(
    configs, [pathlib.Path(w) for w in workdirs], pathlib.Path(data_root), hyper, resume, show_progress
  ).run()


class _Group:
  def __init__(self, configs, workdirs, data_root, hyper, resume, show_progress):
    self.configs, self.workdirs = configs, workdirs
    self.config = config = configs[0]
    self.p = p = build(config, data_root)
    self.engine = p.engine
    self.algorithm = stacked.stacked_algorithm(config, hyper, p.model, self.engine, build_algorithm)
    init_key, self.key = jax.random.split(jax.random.key(config.seed))
    self.state = self.algorithm.init(p.model.init(init_key))
    self.evaluator = Evaluator(p.model, self.engine, config.eval_batch_size)
    self.checkpointers = [Checkpointer(w / "checkpoints") for w in workdirs]
    # As a run alone (`loop._Run`): resident training features, the same cohort shapes.
    make_resident = getattr(self.engine, "make_resident", None)
    if make_resident is not None:
      make_resident(p.train.features)
    sizes, most = loop.cohort_sizes(config)
    self.shapes = plan_shapes(
      p.full_steps, sizes, max_clients=most, lane_multiple=self.engine.client_multiple, seed=config.seed
    )
    self.up_bytes = model_bytes(p.num_params)  # no update encoders in a stacked group
    self.round, self.wall_before, self.clients_trained = 0, 0.0, 0
    if resume:
      self._restore()
    self.writers = [outputs.RunWriter(w, resume_round=self.round if resume else None) for w in workdirs]
    if not resume:
      hours, counts = online_counts(self.p.traces.availability)
      for c, writer in zip(configs, self.writers):
        writer.write_config(json.loads(c.to_json_best_effort()))
        writer.write_availability(hours, counts)
    self.progress = Progress(config.rounds, start_round=self.round) if show_progress else None
    self.timings = {"plan": 0.0, "gather": 0.0, "engine": 0.0, "eval": 0.0}

  def run(self) -> list[dict[str, Any]]:
    config, n = self.config, len(self.workdirs)
    start = time.perf_counter()
    try:
      while self.round < config.rounds:
        record, per_point, durations = self._round()
        self.round += 1
        record["round"] = self.round
        record["wall_s"] = self.wall_before + time.perf_counter() - start
        evals: list[dict] = [{} for _ in range(n)]
        if config.eval_every and (self.round % config.eval_every == 0 or self.round == config.rounds):
          for h in range(n):
            params = jax.tree.map(lambda x, h=h: x[h], self.state.params)
            if self.p.test is not None:
              tic = time.perf_counter()
              evals[h]["eval"] = self.evaluator(params, self.p.test).summary()
              self.timings["eval"] += time.perf_counter() - tic
            if config.eval_train:
              tic = time.perf_counter()
              evals[h]["eval_train"] = self.evaluator(params, self.p.train).metrics
              self.timings["eval"] += time.perf_counter() - tic
        timing = {f"{k}_s": v for k, v in self.timings.items()}
        self.timings = dict.fromkeys(self.timings, 0.0)
        for h, writer in enumerate(self.writers):
          writer.write_round({**record, **per_point[h], **evals[h], "timing": timing}, durations)
        if self.progress is not None:
          ev = evals[0].get("eval", {})
          self.progress.update(self.round, accuracy=ev.get("accuracy"), loss=per_point[0].get("train_loss"))
        if config.checkpoint_every and (self.round % config.checkpoint_every == 0 or self.round == config.rounds):
          self._save(self.wall_before + time.perf_counter() - start)
      wall = self.wall_before + time.perf_counter() - start
      summaries = []
      for c, w, writer in zip(self.configs, self.workdirs, self.writers):
        summary = outputs.summarize(
          outputs.read_metrics(w),
          target_accuracy=c.target_accuracy or None,
          wall_s=wall,
          clients_trained=self.clients_trained,
        )
        writer.write_summary(summary)
        if c.plots:
          plots.make_plots(w)
        summaries.append(summary)
      return summaries
    finally:
      if self.progress is not None:
        self.progress.close()
      for writer in getattr(self, "writers", ()):
        writer.close()
      for ckpt in self.checkpointers:
        ckpt.close()

  def _round(self):
    """``training.loop``'s synchronous round (`loop.sync_round`), with per-point training losses."""
    record, _, plan, _ = loop.sync_round(self, self._apply)
    losses = record.pop("train_loss", None)  # one per point; absent when nobody finished
    per_point = [{} for _ in self.workdirs] if losses is None else [{"train_loss": loss} for loss in losses]
    ended = loop.timeline_ends(plan)
    for writer in self.writers:
      writer.write_timeline(
        self.round + 1, plan.clients, plan.status, plan.start, plan.download_end, plan.compute_end, ended, ended
      )
    finished = plan.status == Status.AGGREGATED
    return record, per_point, (plan.finish - plan.start)[finished]

  def _apply(self, state, cohort, members, key):
    del members  # no client states in a stacked group (stacked.can_stack)
    return self.algorithm.apply(state, cohort, key)

  def _tick(self, phase: str, since: float) -> float:
    now = time.perf_counter()
    self.timings[phase] += now - since
    return now

  def _host_state(self, wall_s: float) -> dict:
    # The layout of training.loop's checkpoints, so a point's workdir resumes as a plain run.
    return {
      "round": self.round,
      "wall_s": wall_s,
      "clients_trained": self.clients_trained,
      "planner": self.p.planner.state_dict(),
      "lane_shapes": np.asarray(sorted(self.engine.lane_shapes), np.int64).reshape(-1, 2),
      "pending": {},
      "pending_steps": [],
    }

  def _save(self, wall_s: float) -> None:
    host = self._host_state(wall_s)
    for h, ckpt in enumerate(self.checkpointers):
      ckpt.save(self.round, stacked.point_state(self.state, h), host)
    for ckpt in self.checkpointers:
      ckpt.wait()

  def _restore(self) -> None:
    latest = {ckpt.latest_round() for ckpt in self.checkpointers}
    if len(latest) != 1 or None in latest:
      raise ConfigError(
        f"--resume: the points of this group hold checkpoints of different rounds {sorted(map(str, latest))}; "
        "resume them one at a time with `fedjaxscale run --resume`"
      )
    round_ = latest.pop()
    template = stacked.point_state(self.state, 0)
    template = ServerState(template.params, template.opt_state, np.asarray(template.round))
    states, host = [], None
    for ckpt in self.checkpointers:
      state, host = ckpt.restore(round_, template)
      states.append(state)
    self.state = self.engine.place_replicated(stacked.stack_states(states))
    self.round = int(host["round"])
    self.wall_before = float(host["wall_s"])
    self.clients_trained = int(host["clients_trained"])
    self.p.planner.load_state_dict(host["planner"])
    self.engine.lane_shapes.update(tuple(int(v) for v in row) for row in host["lane_shapes"])
