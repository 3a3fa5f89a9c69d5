"""Checkpoints of a whole run with orbax: server state, scheduler state, RNG, counters.

A checkpoint holds three items:

* ``server``: the algorithm's ``ServerState`` (device arrays, restored into their sharding);
* ``host_arrays``: every NumPy array of the host-side state (the scheduler's clock, RNG and
  policy, pending asynchronous buffers, the engine's compiled shapes);
* ``host_json``: the rest of that state (ints, floats, strings), as JSON.

Saving is atomic (orbax writes a temporary directory and renames it), so a run killed at any
moment resumes from its last complete checkpoint. A checkpoint damaged afterwards (a truncated
file, a disk error) is skipped with a warning: `Checkpointer.restore_latest` falls back to the
newest one that restores.
"""

import pathlib
import shutil
import warnings
from typing import Any

import numpy as np
import orbax.checkpoint as ocp

_EMPTY = "__empty_array__"


def split_host_state(tree: dict) -> tuple[dict, dict]:
  """Splits a nested dict into (NumPy arrays, JSON-able rest), keeping the nesting.

  Empty arrays travel in the JSON part as ``{"__empty_array__": [dtype, shape]}``.
  """
  arrays, rest = {}, {}
  for key, value in tree.items():
    if isinstance(value, dict):
      a, r = split_host_state(value)
      if a:
        arrays[key] = a
      if r:
        rest[key] = r
    elif isinstance(value, np.ndarray) and value.size == 0:
      rest[key] = {_EMPTY: [value.dtype.str, list(value.shape)]}  # orbax cannot save empty arrays
    elif isinstance(value, np.ndarray):
      arrays[key] = value
    elif isinstance(value, np.generic):
      rest[key] = value.item()
    else:
      rest[key] = value
  return arrays, rest


def merge_host_state(arrays: dict, rest: dict) -> dict:
  out = {}
  for key, value in rest.items():
    if isinstance(value, dict) and _EMPTY in value:
      out[key] = np.zeros(value[_EMPTY][1], np.dtype(value[_EMPTY][0]))
    elif isinstance(value, dict):
      out[key] = merge_host_state({}, value)
    else:
      out[key] = value
  for key, value in arrays.items():
    if isinstance(value, dict):
      out[key] = merge_host_state(value, rest.get(key, {}))
    else:
      out[key] = np.asarray(value)
  return out


class CheckpointError(RuntimeError):
  """No checkpoint of the directory restores; the message names the directory."""


class Checkpointer:
  """Saves and restores a run's state every few rounds.

  Args:
    directory: where checkpoints live (``workdir/checkpoints``).
    max_to_keep: how many of the newest checkpoints to keep.
  """

  def __init__(self, directory: str | pathlib.Path, max_to_keep: int = 2):
    self.directory = pathlib.Path(directory).resolve()
    self._manager = ocp.CheckpointManager(
      self.directory, options=ocp.CheckpointManagerOptions(max_to_keep=max_to_keep, create=True)
    )

  def latest_round(self) -> int | None:
    return self._manager.latest_step()

  def save(self, round_: int, server_state: Any, host_state: dict) -> None:
    arrays, rest = split_host_state(host_state)
    arrays.setdefault("_", np.zeros(1, np.int8))  # an item may not be empty
    self._manager.save(
      round_,
      args=ocp.args.Composite(
        server=ocp.args.StandardSave(server_state),
        host_arrays=ocp.args.StandardSave(arrays),
        host_json=ocp.args.JsonSave(rest),
      ),
    )

  def restore(self, round_: int, server_target: Any) -> tuple[Any, dict]:
    """Restores round ``round_``; ``server_target`` gives the server state's structure and sharding."""
    restored = self._manager.restore(
      round_,
      args=ocp.args.Composite(
        server=ocp.args.StandardRestore(server_target),
        host_arrays=ocp.args.StandardRestore(),
        host_json=ocp.args.JsonRestore(),
      ),
    )
    arrays = dict(restored.host_arrays)
    arrays.pop("_", None)
    return restored.server, merge_host_state(arrays, restored.host_json)

  def restore_latest(self, server_target: Any) -> tuple[Any, dict, list[int]]:
    """Restores the newest checkpoint that restores: ``(server_state, host_state, skipped)``.

    Newer checkpoints that fail to restore are skipped with a warning and listed in ``skipped``
    (newest first; `discard` removes them before the run saves those rounds again).

    Raises:
      CheckpointError: naming the directory, when there is no checkpoint or none restores.
    """
    steps = sorted(self._manager.all_steps(), reverse=True)
    if not steps:
      raise CheckpointError(
        f"{self.directory} holds no complete checkpoint (the run stopped before its first checkpoint)"
      )
    skipped, errors = [], []
    for step in steps:
      try:
        server, host = self.restore(step, server_target)
      except Exception as e:  # orbax and tensorstore raise many kinds for a damaged checkpoint
        reason = f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}"[:300]
        errors.append(f"round {step} ({reason})")
        skipped.append(step)
        continue
      if skipped:
        warnings.warn(
          f"{self.directory}: the checkpoint(s) of round(s) {skipped} do not restore ({'; '.join(errors)}); "
          f"resuming from round {step}",
          RuntimeWarning,
          stacklevel=2,
        )
      return server, host, skipped
    raise CheckpointError(f"{self.directory}: no checkpoint restores: {'; '.join(errors)}")

  def discard(self, rounds) -> None:
    """Removes the checkpoints of ``rounds`` (damaged ones `restore_latest` skipped)."""
    rounds = list(rounds)
    if not rounds:
      return
    for step in rounds:
      shutil.rmtree(self.directory / str(step), ignore_errors=True)
    self._manager.reload()

  def wait(self) -> None:
    self._manager.wait_until_finished()

  def close(self) -> None:
    self._manager.wait_until_finished()
    self._manager.close()
