"""The one error type for bad system-trace input."""

from __future__ import annotations


class TraceError(ValueError):
  """A system trace is malformed.

  The message names the source (a file path, or ``<memory>`` for arrays built
  in code), the client (its index or key in that source) and what is wrong,
  e.g. ``traces.npz: client 17: compute_ms_per_sample is NaN``.
  """

  def __init__(self, source: str, client, what: str):
    self.source = str(source)
    self.client = client
    self.what = what
    where = f"{self.source}: " if source else ""
    who = f"client {client}: " if client is not None else ""
    super().__init__(f"{where}{who}{what}")
