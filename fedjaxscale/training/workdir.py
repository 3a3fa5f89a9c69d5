"""The run directory's safety: one run at a time, resume only into the same run, data that fits.

* `WorkdirLock`: an exclusive ``fcntl.flock`` on ``WORKDIR/.fedjaxscale.lock`` held for the whole
  command; a second command in the same workdir (plain, ``--resume`` or ``--overwrite``) is refused
  with the pid of the holder. The lock file is removed when the holder ends, so a command that
  fails leaves the workdir as it found it.
* `check_resume_config`: the resolved config against the run's ``config.json``; only
  `RESUMABLE_FIELDS` may change.
* Synthetic data is generated into ``WORKDIR/.data.staged`` (both splits) and renamed to
  ``WORKDIR/data`` only once the whole run has been checked (`commit_data`); existing data is
  reused only when its provenance matches the config (`synthetic_matches`).
"""

from __future__ import annotations

import errno
import fcntl
import json
import os
import pathlib
import shutil

LOCK_FILE = ".fedjaxscale.lock"
DATA = "data"
STAGED_DATA = ".data.staged"
OLD_DATA = ".data.old"
# Fields a resumed run may change: how long it runs and how often it evaluates and checkpoints.
RESUMABLE_FIELDS = ("rounds", "eval_every", "checkpoint_every", "plots")


class WorkdirBusy(RuntimeError):
  """Another process holds the workdir's lock."""


class WorkdirLock:
  """An exclusive lock on a workdir (created if missing) for as long as a command runs.

  Example::

    with WorkdirLock(workdir):
      ...  # nobody else runs in workdir meanwhile
  """

  def __init__(self, workdir: str | os.PathLike):
    self.workdir = pathlib.Path(workdir)
    self.path = self.workdir / LOCK_FILE
    self._fd: int | None = None

  def acquire(self) -> None:
    while True:
      fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
      try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
      except OSError as e:
        os.close(fd)
        if e.errno not in (errno.EAGAIN, errno.EACCES, errno.EWOULDBLOCK):
          raise
        holder = _read_pid(self.path)
        who = f"process {holder}" if holder else "another process"
        raise WorkdirBusy(
          f"{self.workdir} is in use by {who} (it holds {self.path}); wait for it to end or use another --workdir"
        ) from None
      # The holder before us may have removed the file after we opened it: lock the live one.
      try:
        same = os.stat(self.path).st_ino == os.fstat(fd).st_ino
      except FileNotFoundError:
        same = False
      if same:
        break
      os.close(fd)
    os.ftruncate(fd, 0)
    os.write(fd, f"{os.getpid()}\n".encode())
    self._fd = fd

  def release(self) -> None:
    if self._fd is None:
      return
    try:
      self.path.unlink(missing_ok=True)  # while still locked: the next holder re-checks the inode
    except OSError:  # gone with its directory
      pass
    os.close(self._fd)  # closing drops the flock
    self._fd = None

  def __enter__(self) -> WorkdirLock:
    self.acquire()
    return self

  def __exit__(self, *exc) -> None:
    self.release()


def _read_pid(path: pathlib.Path) -> int | None:
  try:
    text = path.read_text().strip()
  except OSError:
    return None
  return int(text) if text.isdigit() else None


def _flatten(tree, prefix="") -> dict:
  out = {}
  for key, value in tree.items():
    if isinstance(value, dict):
      out.update(_flatten(value, f"{prefix}{key}."))
    else:
      out[prefix + key] = value
  return out


def config_changes(stored: dict, resolved: dict) -> list[str]:
  """Dotted names of the fields whose values differ (or exist on one side only)."""
  a, b = _flatten(stored), _flatten(resolved)
  return sorted(k for k in set(a) | set(b) if a.get(k, _MISSING) != b.get(k, _MISSING))


_MISSING = object()


def check_resume_config(resolved: dict, workdir: pathlib.Path, error) -> None:
  """Refuses (``error(message)``) a resume whose config differs from the run's but in `RESUMABLE_FIELDS`."""
  path = workdir / "config.json"
  try:
    stored = json.loads(path.read_text(encoding="utf-8"))
  except FileNotFoundError:
    raise error(f"--resume: {path} is missing; the run cannot be checked (start it again with --overwrite)") from None
  except (OSError, ValueError) as e:
    raise error(f"--resume: {path} is unreadable ({e}); start the run again with --overwrite") from None
  if not isinstance(stored, dict):
    raise error(f"--resume: {path} does not hold a config object; start the run again with --overwrite")
  changed = [k for k in config_changes(stored, resolved) if k not in RESUMABLE_FIELDS]
  if changed:
    shown = ", ".join(
      f"config.{k} ({_short(_flatten(stored).get(k))} -> {_short(_flatten(resolved).get(k))})" for k in changed
    )
    raise error(
      f"--resume: the config differs from the run's ({path}) in {shown}; a resumed run may change only "
      f"{', '.join('config.' + f for f in RESUMABLE_FIELDS)} (use --overwrite to start a new run)"
    )


def _short(value) -> str:
  text = "missing" if value is None else json.dumps(value)
  return text if len(text) <= 40 else text[:37] + "..."


def synthetic_parameters(config) -> dict:
  """The generator parameters `write_synthetic` records in the data's provenance for ``config``."""
  d = config.data
  return {
    "num_clients": int(d.num_clients),
    "alpha": None if d.iid else float(d.alpha),
    "beta": None if d.iid else float(d.beta),
    "iid": bool(d.iid),
    "seed": int(d.seed),
    "max_size": int(d.max_size) or None,
  }


def synthetic_matches(root: pathlib.Path, config) -> bool:
  """Whether ``root`` holds both splits, generated for ``config``'s data fields."""
  want = synthetic_parameters(config)
  for split in ("train", "test"):
    try:
      meta = json.loads((root / split / "meta.json").read_text(encoding="utf-8"))
      params = meta["provenance"]["parameters"]
    except (OSError, ValueError, KeyError, TypeError):
      return False
    if not isinstance(params, dict) or any(params.get(k, _MISSING) != v for k, v in want.items()):
      return False
  return True


def remove_staged(workdir: pathlib.Path) -> None:
  for name in (STAGED_DATA, OLD_DATA):
    shutil.rmtree(workdir / name, ignore_errors=True)


def commit_data(workdir: pathlib.Path) -> None:
  """Replaces ``workdir/data`` by the staged data (renames: a kill leaves one or the other)."""
  staged, data, old = workdir / STAGED_DATA, workdir / DATA, workdir / OLD_DATA
  if not staged.exists():
    return
  shutil.rmtree(old, ignore_errors=True)
  if data.exists() or data.is_symlink():
    os.replace(data, old)
  os.replace(staged, data)
  shutil.rmtree(old, ignore_errors=True)
