"""The latency model: how long a client takes to download, train, upload.

Per client and round, in seconds (FedScale's model, Lai et al., ICML 2022,
arXiv:2105.11367, with separate directions and an optional compression)::

    download = model_bits / (down_kbps * 1000)
    compute  = work_samples * ms_per_sample * backward_factor / 1000
    upload   = update_bits * compression / (up_kbps * 1000)

``work_samples`` is ``local_steps * batch_size`` in fixed-steps mode (the
same for every client, as FedScale) or ``epochs * num_samples[client]`` in
epoch mode. ``backward_factor`` (default 3) turns the trace's forward-pass
speed into forward + backward.
"""

from __future__ import annotations

import dataclasses
from typing import NamedTuple

import numpy as np

from fedjaxscale.systems.traces import SystemTraces


def model_bits(num_params: int, dtype="float32") -> int:
  """Size in bits of ``num_params`` parameters of ``dtype`` (e.g. the sum of
  ``x.size`` over a parameter pytree's leaves, and their dtype)."""
  return int(num_params) * np.dtype(dtype).itemsize * 8


class Latency(NamedTuple):
  """Per-client phase durations, float64 seconds, aligned with the clients
  asked for."""

  download: np.ndarray
  compute: np.ndarray
  upload: np.ndarray

  @property
  def total(self) -> np.ndarray:
    return self.download + self.compute + self.upload


@dataclasses.dataclass(frozen=True)
class LatencyModel:
  """Latency of one round of local work (module docstring has the formulas).

  Exactly one of ``local_steps`` (with ``batch_size``) or ``epochs`` is set.

  Attributes:
    model_bits: bits downloaded (see `model_bits`).
    local_steps: local steps per round (fixed-steps mode).
    batch_size: examples per local step (fixed-steps mode).
    epochs: local epochs per round (epoch mode; work scales with the
      client's number of samples).
    update_bits: bits uploaded before compression; default ``model_bits``.
    compression: uploaded fraction of ``update_bits`` (1.0: none; 0.1: a 10x
      compressor).
    backward_factor: forward + backward cost over the forward cost.

  Example:
    >>> lm = LatencyModel(model_bits(1_000_000), local_steps=20, batch_size=20)
    >>> lat = lm.latency(traces, np.array([0, 5]), num_samples)  # doctest: +SKIP
  """

  model_bits: int
  local_steps: int | None = None
  batch_size: int | None = None
  epochs: float | None = None
  update_bits: int | None = None
  compression: float = 1.0
  backward_factor: float = 3.0

  def __post_init__(self):
    steps_mode = self.local_steps is not None or self.batch_size is not None
    if steps_mode == (self.epochs is not None):
      raise ValueError("set either local_steps and batch_size, or epochs")
    if steps_mode and (self.local_steps is None or self.batch_size is None):
      raise ValueError("fixed-steps mode needs both local_steps and batch_size")
    if self.model_bits <= 0 or not 0 < self.compression <= 1:
      raise ValueError("model_bits must be > 0 and compression in (0, 1]")

  def work_samples(self, clients, num_samples=None) -> np.ndarray:
    """Training samples processed per client in one round."""
    clients = np.asarray(clients, np.int64)
    if self.epochs is None:
      return np.full(clients.shape, float(self.local_steps * self.batch_size))
    if num_samples is None:
      raise ValueError("epoch mode needs per-client num_samples")
    return self.epochs * np.asarray(num_samples)[clients].astype(np.float64)

  def latency(self, traces: SystemTraces, clients, num_samples=None) -> Latency:
    """Phase durations of ``clients`` (population indices).

    Args:
      traces: the population's traces.
      clients: int array of population indices.
      num_samples: int64 ``[N]`` samples per client (needed in epoch mode).
    """
    clients = np.asarray(clients, np.int64)
    up_bits = self.model_bits if self.update_bits is None else self.update_bits
    down_s = self.model_bits / (traces.down_kbps[clients] * 1000.0)
    compute_s = self.work_samples(clients, num_samples) * traces.compute_ms[clients] * self.backward_factor / 1000.0
    up_s = up_bits * self.compression / (traces.up_kbps[clients] * 1000.0)
    return Latency(down_s.astype(np.float64), compute_s.astype(np.float64), up_s.astype(np.float64))
