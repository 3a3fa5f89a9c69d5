"""A run's cohort shapes, fixed at its start so that it compiles a handful of programs.

Each distinct ``(lanes, steps)`` shape of a cohort is a compilation (about 0.75 s for logistic
regression on a laptop CPU, tens of seconds for a CNN on a GPU), while padding a cohort into a
somewhat larger shape costs a little compute. Chosen round by round, the shapes follow whichever
clients happened to be picked, and a run of 100 rounds meets ten of them; an asynchronous run,
whose cohorts (the clients that started on one model version and arrive at one server step) have
any size from 1 up, meets one every few steps.

``plan_shapes`` fixes the set before the first round, from what the run's cohorts can be: it
draws cohorts of the run's sizes from the population's step counts, finds each one's best fresh
shape, and keeps greedily the few that lower the mean padding (computed over needed example-steps) most, next to one
shape that holds any cohort of up to ``max_clients`` clients of the population (so every round
fits some shape of the set). Cohorts then take the cheapest shape of the set they fit
(``gather_cohort(..., shapes=...)``).
"""

import numpy as np

from fedjaxscale.core.buckets import bucket_size, coarse_bucket_size
from fedjaxscale.data.cohort import _best_fit_decreasing, pack_lanes

DEFAULT_MAX_SHAPES = 4


def plan_shapes(
  full_steps: np.ndarray,
  client_counts,
  *,
  lane_multiple: int = 1,
  pack: bool = True,
  max_shapes: int = DEFAULT_MAX_SHAPES,
  samples: int = 128,
  seed: int = 0,
  max_clients: int | None = None,
) -> list[tuple[int, int]]:
  """The ``(lanes, steps)`` shapes a run's cohorts are laid into.

  Args:
    full_steps: every population member's local steps for a full round of work (``steps_for``).
    client_counts: the cohort sizes the run has, drawn uniformly (e.g. ``[K]`` for synchronous
      rounds, ``range(1, K + 1)`` for FedBuff's groups).
    max_clients: the largest cohort the set must hold (default: the largest of ``client_counts``),
      e.g. FedBuff's concurrency.
    lane_multiple: lane counts are multiples of this (the engine's device count).
    pack: as ``gather_cohort``.
    max_shapes: the most shapes to return (at least 1: the shape that holds every cohort).
    samples: cohorts drawn to choose the others.
    seed: seeds the draws.

  Returns:
    Up to ``max_shapes`` ``(lanes, steps)`` pairs; a run's training compiles at most one program
    per shape and layout (clients packed in shared lanes or one a lane), so at most twice as many.

  Example::

    shapes = plan_shapes(steps_for(train.client_sizes, 10, local_epochs=1), [20])
    cohort = gather_cohort(train, clients, 10, local_epochs=1, shapes=shapes)
  """
  steps = np.maximum(np.asarray(full_steps, np.int64), 1)
  counts = np.unique(np.asarray(list(client_counts), np.int64))
  if len(steps) == 0 or len(counts) == 0 or counts.min() < 1:
    raise ValueError(f"plan_shapes needs a population and cohort sizes >= 1, got {len(steps)} and {counts.tolist()}")
  if max_shapes < 1:
    raise ValueError(f"max_shapes must be >= 1, got {max_shapes}")
  counts = np.minimum(counts, len(steps))
  longest = int(steps.max())
  equal = int(steps.min()) == longest
  length = longest if equal else coarse_bucket_size(longest)
  most = min(int(max_clients or counts.max()), len(steps))
  # Any cohort of up to `most` clients fits one lane each of the longest length.
  shapes = [(bucket_size(most, lane_multiple), length)]
  rng = np.random.default_rng(seed)
  drawn = []
  for _ in range(samples if max_shapes > 1 else 0):
    m = int(rng.choice(counts))
    drawn.append(steps[rng.choice(len(steps), m, replace=False)])
  packings: dict[tuple[int, int], int] = {}

  def cost(k: int, shape: tuple[int, int]) -> float:
    lanes, l = shape
    s = drawn[k]
    if l < int(s.max()):
      return np.inf
    if not pack or int(s.min()) == int(s.max()):
      return lanes * l if len(s) <= lanes else np.inf
    if (k, l) not in packings:
      packings[k, l] = _best_fit_decreasing(s, np.argsort(-s, kind="stable"), l)[2]
    return lanes * l if packings[k, l] <= lanes else np.inf

  candidates, fresh = set(), []
  for s in drawn:
    _, _, lanes, l = pack_lanes(s, pack=pack, lane_multiple=lane_multiple)
    candidates.add((bucket_size(int(lanes), lane_multiple), int(l)))  # the engine pads lanes to the bucket
    fresh.append(bucket_size(int(lanes), lane_multiple) * int(l))
  fresh = np.asarray(fresh, np.float64)
  # Costs relative to each cohort's own best shape: small cohorts (most of an async run's) count
  # as much as large ones, so the set does not pad a 2-client group to a 30-client shape.
  best = np.array([cost(k, shapes[0]) for k in range(len(drawn))]) / fresh
  while len(shapes) < max_shapes and candidates:
    trial = {c: np.minimum(best, np.array([cost(k, c) for k in range(len(drawn))]) / fresh) for c in sorted(candidates)}
    choice = min(trial, key=lambda c: (trial[c].sum(), c))
    if trial[choice].sum() > 0.95 * best.sum():  # adding a shape must save at least 5% of the padding
      break
    shapes.append(choice)
    best = trial[choice]
    candidates.discard(choice)
  return sorted(shapes)
