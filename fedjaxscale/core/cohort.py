"""The cohort: a round's local-training inputs as fixed-shape host arrays.

A cohort part is a block of *lanes* ``[lanes, steps, batch, ...]``. A lane is a sequence of local
steps that belong to one client, or, when clients are packed, to several clients one after the
other: ``owner[lane, step]`` names the client (its position in the cohort) each step belongs to.
Packing short clients into shared lanes is how ragged local work (local epochs over clients of
very different sizes) keeps padding small with a single compiled shape; when each lane holds one
client, the engine takes a cheaper path.

Arrays here are NumPy, on the host: the engine owns every transfer to the devices.
"""

import dataclasses
from collections.abc import Mapping

import numpy as np

from fedjaxscale.core.buckets import bucket_size

IDLE = -1  # owner of a step that belongs to no client


def take_rows(features: Mapping[str, np.ndarray], rows: np.ndarray) -> dict[str, np.ndarray]:
  """``features[rows]`` on the host, shaped ``rows.shape + per-example shape``."""
  flat = rows.reshape(-1)
  return {name: np.asarray(x[flat]).reshape(rows.shape + x.shape[1:]) for name, x in features.items()}


@dataclasses.dataclass(frozen=True)
class CohortPart:
  """Lanes that share one ``[steps, batch]`` shape.

  The examples are not copied out of their source: ``rows`` indexes the rows of ``features``
  (a dataset's memory-mapped arrays, or arrays built from per-client dicts), and ``gather``
  reads the rows of some lanes only, so in a multi-process run each process reads just the
  lanes that land on its own devices.

  Attributes:
    rows: int64 ``[lanes, steps, batch]``; the source row of every example slot (slots that
      hold no example point at a valid row and are masked).
    features: feature name -> array with a leading row axis (shared by all parts of a cohort).
    mask: bool ``[lanes, steps, batch]``; True where the slot holds a real example. A step with no
      real example changes nothing (no optimizer update).
    owner: int32 ``[lanes, steps]``; the cohort position of the client the step belongs to, or
      ``IDLE``. A client's steps are contiguous within one lane.
  """

  rows: np.ndarray
  features: Mapping[str, np.ndarray]
  mask: np.ndarray
  owner: np.ndarray

  def gather(self, lanes: slice | np.ndarray = slice(None)) -> dict[str, np.ndarray]:
    """The examples of ``lanes``: feature name -> ``[lanes, steps, batch, ...]``."""
    return take_rows(self.features, self.rows[lanes])

  @property
  def batch(self) -> dict[str, np.ndarray]:
    """Every lane's examples (``gather()``); reads them all."""
    return self.gather()

  @property
  def num_lanes(self) -> int:
    return int(self.mask.shape[0])

  @property
  def num_steps(self) -> int:
    return int(self.mask.shape[1])

  @property
  def batch_size(self) -> int:
    return int(self.mask.shape[2])

  @property
  def packed(self) -> bool:
    """True when some lane holds more than one client (a client then idle steps is not packed).

    Computed once and kept on the part (not a ``functools.cached_property``: on Python 3.11 its
    lock costs more than the computation, on the per-round host path); a builder that knows the
    answer records it with ``known_packed``."""
    packed = self.__dict__.get("_packed")
    if packed is None:
      o = self.owner
      packed = bool(((o[:, 1:] != o[:, :-1]) & (o[:, 1:] != IDLE)).any())
      object.__setattr__(self, "_packed", packed)
    return packed

  def known_packed(self, packed: bool) -> "CohortPart":
    """Records ``packed`` as known by construction (each client in a lane of its own from the
    lane's first step: False); returns the part."""
    object.__setattr__(self, "_packed", bool(packed))
    return self

  def run_starts(self) -> np.ndarray:
    """bool ``[lanes, steps]``: a lane's first step, or a step whose owner differs from the last."""
    o = self.owner
    start = np.ones_like(o, dtype=bool)
    start[:, 1:] = o[:, 1:] != o[:, :-1]
    return start

  def boundaries(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per-step ``(start, end, local_step)``: a client's first step, its last, and the step's index
    within the client's own local work."""
    o = self.owner
    start = self.run_starts()
    end = np.ones_like(o, dtype=bool)
    end[:, :-1] = o[:, 1:] != o[:, :-1]
    steps = np.arange(o.shape[1], dtype=np.int32)[None, :]
    first = np.maximum.accumulate(np.where(start, steps, 0), axis=1)
    return start, end, (steps - first).astype(np.int32)

  def pad_lanes(self, num_lanes: int) -> "CohortPart":
    """Appends idle lanes (mask False, owner ``IDLE``) up to ``num_lanes``."""
    extra = num_lanes - self.num_lanes
    if extra < 0:
      raise ValueError(f"cannot pad {self.num_lanes} lanes down to {num_lanes}")
    if extra == 0:
      return self

    def pad(x, value):
      return np.pad(x, [(0, extra)] + [(0, 0)] * (x.ndim - 1), constant_values=value)

    return CohortPart(pad(self.rows, self.rows.flat[0]), self.features, pad(self.mask, False), pad(self.owner, IDLE))

  def slice_lanes(self, start: int, stop: int) -> "CohortPart":
    return CohortPart(self.rows[start:stop], self.features, self.mask[start:stop], self.owner[start:stop])


@dataclasses.dataclass(frozen=True)
class Cohort:
  """A round's cohort.

  Attributes:
    parts: the fixed-shape parts; each client's steps lie in exactly one lane of one part.
    client_ids: the clients in cohort order (``owner`` indexes this).
    num_examples: float32 ``[clients]``; each client's training-set size (the FedAvg n_k).
    weights: float32 ``[clients]``; extra aggregation multipliers (1 by default; the staleness
      discount in asynchronous rounds).
  """

  parts: tuple[CohortPart, ...]
  client_ids: np.ndarray
  num_examples: np.ndarray
  weights: np.ndarray

  def __post_init__(self):
    n = len(self.client_ids)
    if self.num_examples.shape != (n,) or self.weights.shape != (n,):
      raise ValueError(
        f"a cohort of {n} clients needs num_examples and weights of shape ({n},), got "
        f"{self.num_examples.shape} and {self.weights.shape}"
      )
    seen = np.zeros(n, np.int64)
    for p in self.parts:
      o = p.owner
      # The owner of every run of steps: a step that starts no run has its predecessor's owner,
      # so checking the runs' owners checks every step's.
      owners = o[p.run_starts() & (o != IDLE)]
      if len(owners) and (owners.min() < 0 or owners.max() >= n):
        raise ValueError(f"cohort part names client positions outside 0..{n - 1}")
      seen += np.bincount(owners, minlength=n)
    if not (seen == 1).all():
      bad = np.flatnonzero(seen != 1)[:5].tolist()
      raise ValueError(f"every client must own exactly one run of steps in one lane; positions {bad} do not")

  @property
  def num_clients(self) -> int:
    return len(self.client_ids)

  @property
  def real_example_steps(self) -> int:
    return int(sum(np.count_nonzero(p.mask) for p in self.parts))  # (bool .sum() is ~10x slower)

  def computed_example_steps(self, lane_multiple: int = 1, max_lanes_per_chunk: int | None = None) -> int:
    """Example slots the engine computes once each part's lanes are padded to their bucket (an
    upper bound: a part the engine runs as one chunk may run with fewer lanes, at most its bucket)."""
    return sum(
      padded_num_lanes(p.num_lanes, lane_multiple, max_lanes_per_chunk) * p.num_steps * p.batch_size for p in self.parts
    )

  def padding_efficiency(self, lane_multiple: int = 1, max_lanes_per_chunk: int | None = None) -> float:
    """Real example-steps / computed example-steps (1.0 means no padding at all)."""
    computed = self.computed_example_steps(lane_multiple, max_lanes_per_chunk)
    return self.real_example_steps / computed if computed else 1.0


def chunk_sizes(num_lanes: int, lane_multiple: int = 1, max_lanes_per_chunk: int | None = None) -> list[int]:
  """The padded sizes of the chunks a part of ``num_lanes`` lanes runs as.

  Full chunks have ``max_lanes_per_chunk`` lanes (rounded down to the device multiple); the
  remainder is padded to its bucket size, so a run sees at most two chunk shapes per part shape.
  """
  if max_lanes_per_chunk is None or num_lanes <= max_lanes_per_chunk:
    return [bucket_size(num_lanes, lane_multiple)]
  chunk = max(lane_multiple, max_lanes_per_chunk // lane_multiple * lane_multiple)
  full, rest = divmod(num_lanes, chunk)
  sizes = [chunk] * full
  if rest:
    sizes.append(min(chunk, bucket_size(rest, lane_multiple)))
  return sizes


def padded_num_lanes(num_lanes: int, lane_multiple: int = 1, max_lanes_per_chunk: int | None = None) -> int:
  return sum(chunk_sizes(num_lanes, lane_multiple, max_lanes_per_chunk))
