"""The per-client backends: ``loop`` (one jitted client at a time, the baseline and reference the
compiled round must equal) and ``debug`` (no ``jit``; an exception names the client)."""

import functools
import threading

import jax
import jax.numpy as jnp
import numpy as np

from fedjaxscale.core.buckets import bucket_size
from fedjaxscale.core.cohort import IDLE
from fedjaxscale.engine.lanes import pad_steps
from fedjaxscale.engine.program import Aggregate, ClientError, ClientProgram, accumulate, client_key, contribution


class PerClientRunner:
  """Runs a cohort one client at a time; ``jit=False`` is the ``debug`` backend."""

  def __init__(self, stats, jit: bool = True):
    self.stats = stats
    self.jit = jit
    self._programs: dict = {}
    self._lock = threading.Lock()

  def run(self, program: ClientProgram, shared, cohort, rng):
    if not self.jit:
      with jax.disable_jit():
        return self._run(functools.partial(contribution, program), accumulate, shared, cohort, rng, tag_errors=True)
    with self._lock:
      if program not in self._programs:
        self._programs[program] = (
          jax.jit(functools.partial(contribution, program)),
          jax.jit(accumulate, donate_argnums=(0,)),
        )
      fn, acc_fn = self._programs[program]
    return self._run(fn, acc_fn, shared, cohort, rng, tag_errors=False)

  def _run(self, contribution_fn, accumulate_fn, shared, cohort, rng, tag_errors):
    def one(k, batch, mask):
      return contribution_fn(shared, batch, mask, cohort.num_examples[k], cohort.weights[k], client_key(rng, k))

    return run_clients(cohort, one, accumulate_fn, self.stats, tag_errors)


def run_clients(cohort, one, accumulate_fn, stats, tag_errors: bool):
  """Runs ``one(k, batch, mask) -> (weighted, weight, nonfinite, metrics)`` for each client ``k``
  of ``cohort`` on its own steps, cut out of its lane and padded to the client's own step bucket.

  Returns:
    ``(aggregate, results)``: the sum of the contributions and, per part, ``(owners, metrics,
    nonfinite)`` host arrays (as ``lanes.per_client`` takes them). With ``tag_errors`` an
    exception is re-raised as a ``ClientError`` naming the client.
  """
  acc, results = None, []
  for part in cohort.parts:
    start, end, _ = part.boundaries()
    real = part.owner != IDLE
    first_lane, first_step = np.nonzero(start & real)
    stop_step = np.nonzero(end & real)[1] + 1  # same (lane, step) order as the starts
    metrics, nonfinite, owners = [], [], []
    for lane, first, stop in zip(first_lane, first_step, stop_step):
      k = int(part.owner[lane, first])
      # Pad to the client's own step bucket (not the lane length): a few shapes, little waste.
      steps = bucket_size(int(stop - first))
      batch = {name: pad_steps(v[0, first:stop], steps) for name, v in part.gather([lane]).items()}
      mask = pad_steps(part.mask[lane, first:stop], steps)
      try:
        weighted, w, nf, m = one(k, batch, mask)
      except Exception as e:  # Tag the failure with the client; keep the original as the cause.
        if not tag_errors:
          raise
        raise ClientError(
          f"client {str(cohort.client_ids[k])!r} (cohort position {k}) failed: {type(e).__name__}: {e}"
        ) from e
      contrib = Aggregate(weighted, w, nf.astype(jnp.int32))
      acc = contrib if acc is None else accumulate_fn(acc, contrib)
      metrics.append(m)
      nonfinite.append(nf)
      owners.append(k)
      stats.computed_example_steps += steps * part.batch_size
    if owners:
      metrics, nonfinite = jax.device_get((metrics, nonfinite))
      results.append(
        (np.array(owners), {name: np.array([m[name] for m in metrics]) for name in metrics[0]}, np.array(nonfinite))
      )
  return acc, results
