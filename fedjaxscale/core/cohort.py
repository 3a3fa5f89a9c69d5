"""The cohort: a round's local-training inputs as fixed-shape host arrays.

A cohort is a tuple of *parts*. Each part holds clients that run the same number of local steps
(``[clients, steps, batch, ...]``); fixed-``local_steps`` cohorts have one part, ragged
``local_epochs`` cohorts have one part per step bucket so padding stays small. The engine pads
each part's client axis to a bucket size (a multiple of the device count) and runs it.

Arrays here are NumPy, on the host: the engine owns every transfer to the devices.
"""

import dataclasses
from typing import Mapping

import numpy as np

from fedjaxscale.core.buckets import bucket_size


@dataclasses.dataclass(frozen=True)
class CohortPart:
  """Clients that share one ``[steps, batch]`` shape.

  Attributes:
    batch: feature name -> array ``[clients, steps, batch, ...]``.
    mask: bool ``[clients, steps, batch]``; True where the slot holds a real example. A step with
      no real example is skipped (no optimizer update), which is how a client's shorter local
      work is expressed.
    num_examples: float32 ``[clients]``; the client's number of training examples (the FedAvg
      weight n_k). Zero marks a padding client.
    weight: float32 ``[clients]``; an extra aggregation multiplier (1 by default, the staleness
      discount in asynchronous rounds, 0 for padding).
    position: int32 ``[clients]``; the client's index in the cohort's client list (-1 for padding).
      Per-client randomness is ``fold_in(rng, position)``, so it does not depend on padding or
      on which part a client lands in.
  """

  batch: Mapping[str, np.ndarray]
  mask: np.ndarray
  num_examples: np.ndarray
  weight: np.ndarray
  position: np.ndarray

  @property
  def num_clients(self) -> int:
    return int(self.mask.shape[0])

  @property
  def num_steps(self) -> int:
    return int(self.mask.shape[1])

  @property
  def batch_size(self) -> int:
    return int(self.mask.shape[2])

  def pad_clients(self, num_clients: int) -> "CohortPart":
    """Appends padding clients (mask False, weight 0, position -1) up to ``num_clients``."""
    extra = num_clients - self.num_clients
    if extra < 0:
      raise ValueError(f"cannot pad {self.num_clients} clients down to {num_clients}")
    if extra == 0:
      return self

    def pad(x, value=0):
      widths = [(0, extra)] + [(0, 0)] * (x.ndim - 1)
      return np.pad(x, widths, constant_values=value)

    return CohortPart(
        batch={k: pad(v) for k, v in self.batch.items()},
        mask=pad(self.mask, False),
        num_examples=pad(self.num_examples),
        weight=pad(self.weight),
        position=pad(self.position, -1),
    )

  def slice_clients(self, start: int, stop: int) -> "CohortPart":
    return CohortPart(
        batch={k: v[start:stop] for k, v in self.batch.items()},
        mask=self.mask[start:stop],
        num_examples=self.num_examples[start:stop],
        weight=self.weight[start:stop],
        position=self.position[start:stop],
    )


@dataclasses.dataclass(frozen=True)
class Cohort:
  """A round's cohort: its parts and the ids of its clients in order.

  Attributes:
    parts: the fixed-shape parts; every client of ``client_ids`` is in exactly one.
    client_ids: the clients in cohort order (``position`` indexes this).
  """

  parts: tuple[CohortPart, ...]
  client_ids: np.ndarray

  def __post_init__(self):
    positions = np.concatenate([p.position[p.position >= 0] for p in self.parts]) if self.parts else np.zeros(0, np.int32)
    if sorted(positions.tolist()) != list(range(len(self.client_ids))):
      raise ValueError(
          f"cohort parts cover positions {sorted(positions.tolist())[:10]}..., expected each of "
          f"0..{len(self.client_ids) - 1} exactly once")

  @property
  def num_clients(self) -> int:
    return len(self.client_ids)

  @property
  def num_examples(self) -> np.ndarray:
    """Per-client training-set sizes, in cohort order."""
    out = np.zeros(self.num_clients, np.float32)
    for p in self.parts:
      real = p.position >= 0
      out[p.position[real]] = p.num_examples[real]
    return out

  @property
  def real_example_steps(self) -> int:
    return int(sum(int(p.mask.sum()) for p in self.parts))

  def computed_example_steps(self, client_multiple: int = 1, max_clients_per_chunk: int | None = None) -> int:
    """Example slots the engine computes once each part's client axis is padded to its bucket."""
    total = 0
    for p in self.parts:
      total += padded_num_clients(p.num_clients, client_multiple, max_clients_per_chunk) * p.num_steps * p.batch_size
    return total

  def padding_efficiency(self, client_multiple: int = 1, max_clients_per_chunk: int | None = None) -> float:
    """Real example-steps / computed example-steps (1.0 means no padding at all)."""
    computed = self.computed_example_steps(client_multiple, max_clients_per_chunk)
    return self.real_example_steps / computed if computed else 1.0


def chunk_sizes(num_clients: int, client_multiple: int = 1, max_clients_per_chunk: int | None = None) -> list[int]:
  """The padded sizes of the chunks a part of ``num_clients`` clients runs as.

  Full chunks have ``max_clients_per_chunk`` clients (rounded down to the device multiple); the
  remainder is padded to its bucket size, so a run sees at most two chunk shapes per part shape.
  """
  if max_clients_per_chunk is None or num_clients <= max_clients_per_chunk:
    return [bucket_size(num_clients, client_multiple)]
  chunk = max(client_multiple, max_clients_per_chunk // client_multiple * client_multiple)
  full, rest = divmod(num_clients, chunk)
  sizes = [chunk] * full
  if rest:
    sizes.append(min(chunk, bucket_size(rest, client_multiple)))
  return sizes


def padded_num_clients(num_clients: int, client_multiple: int = 1, max_clients_per_chunk: int | None = None) -> int:
  return sum(chunk_sizes(num_clients, client_multiple, max_clients_per_chunk))
