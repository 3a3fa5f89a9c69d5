"""A chunk's host arrays (``HostLanes``): cut from a cohort part, sliced and padded into chunks,
and the per-lane outputs put back in cohort order."""

from typing import NamedTuple

import numpy as np

from fedjaxscale.core.cohort import IDLE, Cohort, CohortPart


class HostLanes(NamedTuple):
  """A chunk's per-lane (one client per lane) or per-step (packed lanes) host arrays.

  ``rows`` indexes the cohort's features; the examples themselves are read per device when the
  chunk is placed (``put_rows``), or gathered on the devices from resident features.
  """

  rows: np.ndarray
  mask: np.ndarray
  owner: np.ndarray
  start: np.ndarray | None
  end: np.ndarray | None
  local_step: np.ndarray | None
  num_examples: np.ndarray
  weight: np.ndarray

  @property
  def packed(self) -> bool:
    return self.start is not None

  @property
  def num_lanes(self) -> int:
    return int(self.mask.shape[0])


def host_lanes(part: CohortPart, cohort: Cohort) -> HostLanes:
  packed = part.packed
  owner = part.owner if packed else part.owner[:, 0]
  real = owner != IDLE
  if real.all():  # every lane starts with a client (before padding): no idle entries to zero
    num_examples = np.asarray(cohort.num_examples[owner], np.float32)
    weight = np.asarray(cohort.weights[owner], np.float32)
  else:
    safe = np.where(real, owner, 0)
    num_examples = np.where(real, cohort.num_examples[safe], 0).astype(np.float32)
    weight = np.where(real, cohort.weights[safe], 0).astype(np.float32)
  start = end = local_step = None
  if packed:
    start, end, local_step = part.boundaries()
  return HostLanes(part.rows, part.mask, owner.astype(np.int32), start, end, local_step, num_examples, weight)


def slice_lanes(lanes: HostLanes, start: int, stop: int) -> HostLanes:
  return HostLanes(*(None if x is None else x[start:stop] for x in lanes))


def pad_lanes(lanes: HostLanes, size: int) -> HostLanes:
  extra = size - lanes.mask.shape[0]
  if extra == 0:
    return lanes

  def pad(x, value=0):  # np.pad's own overhead is most of a small chunk's host time
    out = np.empty((x.shape[0] + extra,) + x.shape[1:], x.dtype)
    out[: x.shape[0]] = x
    out[x.shape[0] :] = value
    return out

  return HostLanes(
    pad(lanes.rows, lanes.rows.flat[0]),
    pad(lanes.mask, False),
    pad(lanes.owner, IDLE),
    None if lanes.start is None else pad(lanes.start, True),
    None if lanes.end is None else pad(lanes.end, True),
    None if lanes.local_step is None else pad(lanes.local_step),
    pad(lanes.num_examples),
    pad(lanes.weight),
  )


def pad_steps(x: np.ndarray, steps: int) -> np.ndarray:
  return np.pad(x, [(0, steps - x.shape[0])] + [(0, 0)] * (x.ndim - 1))


def per_client(cohort: Cohort, results) -> dict[str, np.ndarray]:
  """Puts per-lane (or per-step) outputs back in cohort order, dropping padding and idle steps.

  ``results`` holds ``(HostLanes, metrics, nonfinite)`` items from the compiled backend, or
  ``(positions, metrics, nonfinite)`` items from the per-client backends.
  """
  out: dict[str, np.ndarray] = {}
  nonfinite = np.zeros(cohort.num_clients, bool)

  def put(positions, metrics, nf):
    for k, v in metrics.items():
      if k not in out:
        out[k] = np.zeros((cohort.num_clients,) + v.shape[1:], v.dtype)
      out[k][positions] = v
    nonfinite[positions] = nf

  for item in results:
    if isinstance(item[0], HostLanes):
      lanes, metrics, nf = item
      if lanes.start is None:  # one client per lane
        real = lanes.owner != IDLE
        put(lanes.owner[real], {k: v[real] for k, v in metrics.items()}, nf[real])
      else:  # packed: a client's metrics are those of its last step
        last = lanes.end & (lanes.owner != IDLE)
        put(lanes.owner[last], {k: v[last] for k, v in metrics.items()}, nf[last])
    else:
      put(*item)
  out["nonfinite"] = nonfinite
  return out
