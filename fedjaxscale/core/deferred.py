"""A read-only mapping computed when it is first read.

A round's diagnostics and per-client results live on the devices until someone reads them.
Returning them as ``Deferred`` lets ``apply`` return as soon as the round is dispatched: JAX runs
the round asynchronously, so a caller that does not read a round's diagnostics (or reads them
later) can prepare the next cohort while this one trains, as a hand-written ``jit`` loop would.
"""

from collections.abc import Callable, Iterator, Mapping
from typing import Any


class Deferred(Mapping):
  """``compute()``'s mapping, computed on first access and then kept.

  Reads like a dict (``d['loss']``, ``'loss' in d``, ``dict(d)``, ``d.items()``); read-only.
  ``dict(d)`` gives a plain dict (for ``json.dumps``).
  """

  __slots__ = ("_compute", "_value")

  def __init__(self, compute: Callable[[], Mapping[str, Any]]):
    self._compute = compute
    self._value = None

  def _resolve(self) -> Mapping[str, Any]:
    if self._value is None:
      self._value = dict(self._compute())
      self._compute = None
    return self._value

  def __getitem__(self, key: str) -> Any:
    return self._resolve()[key]

  def __iter__(self) -> Iterator[str]:
    return iter(self._resolve())

  def __len__(self) -> int:
    return len(self._resolve())

  def __repr__(self) -> str:
    return f"Deferred({self._resolve()!r})"
