"""Shared plumbing of the LEAF and FedScale converters: output checks, progress, summaries."""

from __future__ import annotations

import os
import sys
import time
from collections.abc import Callable, Sequence
from typing import Any, TextIO

from data_pipelines.errors import ConversionError
from fedjaxscale.data.dataset import META_FILE, DatasetError, FederatedDataset


def check_outputs(output_dir: str, splits: Sequence[str], overwrite: bool, extra_files: Sequence[str] = ()) -> None:
  """Refuses, before anything is read or written, to replace existing outputs without overwrite.

  Checking every split up front means a refused run leaves all of them as they were (the
  writer would only refuse the first split it reached, after earlier ones were replaced).
  """
  if overwrite:
    return
  for split in splits:
    path = os.path.join(output_dir, split)
    if os.path.isfile(os.path.join(path, META_FILE)):
      raise ConversionError(f"{path}: already holds a dataset; pass --overwrite (overwrite=True) to replace it")
  for name in extra_files:
    path = os.path.join(output_dir, name)
    if os.path.exists(path):
      raise ConversionError(f"{path}: already exists; pass --overwrite (overwrite=True) to replace it")


def summary_line(split: str, ds: FederatedDataset, num_classes: int | None) -> str:
  classes = "n/a" if num_classes is None else f"{num_classes:,}"
  return f"{split}: {ds.num_clients:,} clients / {ds.num_examples:,} examples / {classes} classes"


class Progress:
  """Prints a progress line to stderr at most every ``interval`` seconds (and on ``done``)."""

  def __init__(self, prefix: str, *, interval: float = 2.0, stream: TextIO | None = None, enabled: bool = True):
    self._prefix = prefix
    self._interval = interval
    self._stream = stream
    self._enabled = enabled
    self._last = time.monotonic()
    self._start = self._last

  def update(self, message: str, *, force: bool = False) -> None:
    if not self._enabled:
      return
    now = time.monotonic()
    if force or now - self._last >= self._interval:
      self._last = now
      print(f"[{self._prefix}] {message} ({now - self._start:.1f}s)", file=self._stream or sys.stderr, flush=True)


def run_main(body: Callable[[], Any]) -> None:
  """Runs a converter's CLI body; a bad source prints one line and exits with status 2."""
  try:
    body()
  except (ConversionError, DatasetError) as e:
    print(f"error: {e}", file=sys.stderr)
    sys.exit(2)
