"""Stateful algorithms in the training loop: the configs' smoke runs, resume, bad input."""

import pathlib

import jax
import numpy as np
import pytest

from fedjaxscale.training import ConfigError, train_and_evaluate
from fedjaxscale.training.outputs import read_metrics
from tests.test_training import CONFIGS, kill_then_resume, load_config, without_wall

ROUNDS = 8  # enough rounds after the third for a kill -9 to land mid-run


@pytest.fixture(scope="module")
def scaffold_run(tmp_path_factory):
  """The small SCAFFOLD config run straight through, a checkpoint every round: the reference of the
  resume tests."""
  workdir = tmp_path_factory.mktemp("scaffold")
  config = load_config("scaffold", "scaffold,small", checkpoint_every=1, rounds=ROUNDS)
  summary = train_and_evaluate(config, workdir, show_progress=False)
  return config, workdir, summary


def test_scaffold_small_runs_and_stores_states(scaffold_run):
  config, workdir, summary = scaffold_run
  records = read_metrics(workdir)
  assert [r["round"] for r in records] == list(range(1, ROUNDS + 1))
  assert all(np.isfinite(r["train_loss"]) for r in records)
  stored = [r["states_stored"] for r in records]
  assert stored == sorted(stored) and stored[0] >= config.clients_per_round and stored[-1] > stored[0]
  assert list((workdir / "client_states" / "checkpoints").glob("chunk-*.bin"))


def test_scaffold_resume_equals_uninterrupted(scaffold_run, tmp_path):
  config, full_dir, _ = scaffold_run
  train_and_evaluate(
    load_config("scaffold", "scaffold,small", checkpoint_every=1, rounds=2), tmp_path, show_progress=False
  )
  train_and_evaluate(config, tmp_path, resume=True, show_progress=False)
  assert without_wall(read_metrics(tmp_path)) == without_wall(read_metrics(full_dir))
  a, b = restored_store(config, tmp_path), restored_store(config, full_dir)
  assert not a[1][1].all()  # some clients hold a state
  jax.tree.map(lambda x, y: np.testing.assert_array_equal(np.asarray(x), np.asarray(y)), a, b)


def test_resume_with_another_state_config_is_refused(scaffold_run, tmp_path):
  config, _, _ = scaffold_run
  train_and_evaluate(
    load_config("scaffold", "scaffold,small", rounds=2, checkpoint_every=1), tmp_path, show_progress=False
  )
  other = load_config("scaffold", "scaffold,small", checkpoint_every=1)
  other.state.storage_dtype = "bfloat16"
  with pytest.raises(ConfigError, match=r"--resume: the config differs .*config\.state\.storage_dtype"):
    train_and_evaluate(other, tmp_path, resume=True, show_progress=False)


def test_ditto_small_runs(tmp_path):
  summary = train_and_evaluate(load_config("ditto", "default,small", plots=True), tmp_path, show_progress=False)
  records = read_metrics(tmp_path)
  assert len(records) == 4 and all(np.isfinite(r["train_loss"]) for r in records)
  personal = [r["eval_personal"] for r in records if "eval_personal" in r]
  assert len(personal) == 2 and all(0 <= p["accuracy"] <= 1 and "client_accuracy_p10" in p for p in personal)
  assert (tmp_path / "plots" / "accuracy_vs_round.png").exists()
  assert summary


@pytest.mark.parametrize(
  "overrides,message",
  [
    ({"state.budget_mb": 0.001}, r"config\.state\.budget_mb: .*clients x 2,\d+ state bytes.*over the budget"),
    ({"state.backing": "disk"}, r"state\.backing"),
    ({"system.mode": "async"}, r"system\.mode.*synchronous rounds only"),
  ],
)
def test_bad_state_config_is_refused_before_anything_is_written(tmp_path, overrides, message):
  config = load_config("scaffold", "scaffold,small", **overrides)
  workdir = tmp_path / "run"
  with pytest.raises(ConfigError, match=message):
    train_and_evaluate(config, workdir, show_progress=False)
  assert not workdir.exists()


def restored_store(config, workdir):
  """The server state and every client's stored state in ``workdir``'s newest checkpoint."""
  from fedjaxscale.state import ClientStateStore, restore_chunks
  from fedjaxscale.training import client_states
  from fedjaxscale.training.checkpoint import Checkpointer
  from fedjaxscale.training.setup import build

  parts = build(config, workdir)
  like = parts.algorithm.init(parts.model.init(jax.random.key(0)))
  ckpt = Checkpointer(pathlib.Path(workdir) / "checkpoints")
  server, host = ckpt.restore(ckpt.latest_round(), like)
  ckpt.close()
  store = ClientStateStore(client_states.layout_of(config, parts.algorithm, parts.model), parts.train.num_clients)
  restore_chunks(store, host["client_states"], pathlib.Path(workdir) / "client_states" / "checkpoints")
  return jax.device_get(server), store.gather(np.arange(parts.train.num_clients))


def test_chunks_of_the_newest_committed_checkpoint_survive_a_late_commit(tmp_path, monkeypatch):
  """Orbax commits in the background: a checkpoint may commit only after the next round's chunks are saved.

  This checkpointer commits each one as late as orbax may (when the next is saved, or on ``wait``)
  and checks, whenever a checkpoint is saved, that every chunk the newest committed checkpoint
  names is on disk: what a run killed at that moment would resume from.
  """
  from fedjaxscale.state.checkpoint import chunk_file
  from fedjaxscale.training import loop
  from fedjaxscale.training.checkpoint import Checkpointer

  chunks = tmp_path / "client_states" / "checkpoints"
  checked = []

  class LateCommit(Checkpointer):
    def __init__(self, *args, **kwargs):
      super().__init__(*args, **kwargs)
      self.late, self.indices = None, {}

    def save(self, round_, server_state, host_state):
      newest = self.latest_round()
      if newest is not None:
        versions = np.asarray(self.indices[newest]["versions"])
        missing = [chunk_file(chunks, c, int(v)).name for c, v in enumerate(versions) if v >= 0]
        missing = [name for name in missing if not (chunks / name).exists()]
        assert not missing, f"round {round_}: the newest committed checkpoint (round {newest}) names missing {missing}"
        checked.append(round_)
      self.wait()
      self.indices[round_] = host_state["client_states"]
      self.late = (round_, server_state, host_state)

    def wait(self):
      if self.late is not None:
        super().save(*self.late)
        super().wait()
        self.late = None

    def close(self):
      self.wait()
      super().close()

  monkeypatch.setattr(loop, "Checkpointer", LateCommit)
  config = load_config("scaffold", "scaffold,small", checkpoint_every=1, rounds=5, eval_every=0)
  train_and_evaluate(config, tmp_path, show_progress=False)
  assert checked == [2, 3, 4, 5]


def test_killed_scaffold_run_resumes_bit_for_bit(scaffold_run, tmp_path):
  config, straight, _ = scaffold_run
  args = [
    "--config",
    f"{CONFIGS / 'scaffold.py'}:scaffold,small",
    f"--config.rounds={ROUNDS}",
    "--config.checkpoint_every=1",
    "--noprogress",
  ]
  killed = tmp_path / "killed"
  kill_then_resume(killed, args)
  assert without_wall(read_metrics(killed)) == without_wall(read_metrics(straight))
  jax.tree.map(
    lambda a, b: np.testing.assert_array_equal(np.asarray(a), np.asarray(b)),
    restored_store(config, killed),
    restored_store(config, straight),
  )
