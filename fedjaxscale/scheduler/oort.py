"""Oort's guided participant selection.

Lai, Zhu, Madhyastha, Chowdhury, "Oort: Efficient Federated Learning via
Guided Participant Selection", OSDI 2021 (arXiv:2010.06081). Follows the
training selector FedScale ships (``thirdparty/oort/oort.py``), vectorized
over the population. For an explored client ``i`` in round ``R``::

    util_i = samples_i * sqrt(mean_sq_loss_i)                 (statistical)
    score_i = (min(util_i, clip) - u_min) / u_range           (normalised)
              + sqrt(0.1 * log(R) / last_round_i)             (staleness bonus)
    score_i *= (T / t_i) ** alpha   if t_i > T                (speed penalty)

``T`` is the preferred round duration: the ``round_threshold`` percentile of
all clients' durations; a pacer raises ``round_threshold`` by
``pacer_delta`` when the exploited utility of the last ``pacer_step``
rounds stalls (and lowers it when it swings by more than 5x). Each round a
fraction ``exploration`` (decaying by ``exploration_decay`` to
``exploration_min``) of the slots goes to unexplored clients, picked by
size (with the same speed penalty) among the top ``sample_window`` x;
the rest is sampled, proportionally to score, from the explored clients
scoring above ``cut_off_util`` x the cut-off score. The first round (no
client explored yet) is uniform, as in FedScale. FedScale's optional
blacklist is left out.

``samples_i`` is the number of distinct examples the client trained on:
``min(num_samples_i, samples_cap)`` (``samples_cap`` = local_steps x
batch_size in fixed-steps mode, None in epoch mode). The engine supplies
``mean_sq_loss_i``, the mean over the client's trained examples of the
squared per-example training loss.
"""

from __future__ import annotations

import math

import numpy as np

from fedjaxscale.scheduler.selection import SelectionPolicy, sample_online


class OortSelection(SelectionPolicy):
  """Oort (module docstring). Defaults are FedScale's.

  Args:
    num_samples: int ``[N]`` samples per client.
    expected_durations: float ``[N]`` round-duration estimates, seconds
      (e.g. ``LatencyModel.latency(...).total`` for everyone); replaced by
      observed durations as clients report.
    samples_cap: cap on trained distinct samples (None: no cap).
  """

  name = "oort"

  def __init__(
    self,
    num_samples,
    expected_durations,
    *,
    samples_cap: int | None = None,
    exploration_factor: float = 0.9,
    exploration_decay: float = 0.98,
    exploration_min: float = 0.3,
    round_threshold: float = 30.0,
    round_penalty: float = 2.0,
    cut_off_util: float = 0.05,
    sample_window: float = 5.0,
    pacer_step: int = 20,
    pacer_delta: float = 5.0,
    clip_bound: float = 0.98,
  ):
    num_samples = np.asarray(num_samples, np.float64)
    self.samples = num_samples if samples_cap is None else np.minimum(num_samples, samples_cap)
    n = self.samples.size
    self.hp = dict(
      exploration_decay=exploration_decay,
      exploration_min=exploration_min,
      round_penalty=round_penalty,
      cut_off_util=cut_off_util,
      sample_window=sample_window,
      pacer_step=pacer_step,
      pacer_delta=pacer_delta,
      clip_bound=clip_bound,
    )
    self.reward = self.samples.copy()
    self.duration = np.asarray(expected_durations, np.float64).copy()
    if self.duration.shape != (n,):
      raise ValueError("expected_durations must align with num_samples")
    self.last_round = np.zeros(n, np.int64)
    self.count = np.zeros(n, np.int64)
    self.exploration = float(exploration_factor)
    self.round_threshold = float(round_threshold)
    self.training_round = 0
    self.selections = 0
    self.exploit_history = np.zeros(0)
    self.explore_history = np.zeros(0)
    self.explore_clients = np.zeros(0, np.int64)
    self.exploit_clients = np.zeros(0, np.int64)
    self.successful = np.zeros(0, np.int64)

  # ------------------------------------------------------------------ select

  def select(self, rng, availability, t, num, round_index, exclude=None):
    self.selections += 1
    if not (self.count > 0).any():  # FedScale's first round is random.
      return sample_online(rng, availability, t, num, exclude)
    hp = self.hp
    cur = round_index + 1
    self.training_round = cur
    self._pacer()
    feasible = availability.online_mask(t)
    if exclude is not None:
      feasible &= ~exclude
    if feasible.sum() <= num:
      return rng.permutation(np.flatnonzero(feasible)).astype(np.int64)
    n = self.duration.size
    if self.round_threshold < 100.0:
      k = min(int(n * self.round_threshold / 100.0), n - 1)
      prefer = float(np.partition(self.duration, k)[k])
    else:
      prefer = math.inf

    def penalised(x, who):
      d = self.duration[who]
      slow = d > prefer
      if prefer < math.inf and slow.any():
        x = np.where(slow, x * (prefer / np.maximum(1e-4, d)) ** hp["round_penalty"], x)
      return x

    cand = np.flatnonzero(feasible)
    rewards = self.reward[cand]
    positive = np.sort(rewards[rewards > 0])
    explored = cand[self.count[cand] > 0]
    exploit = np.zeros(0, np.int64)
    self.exploration = max(self.exploration * hp["exploration_decay"], hp["exploration_min"])
    explore_len = int(num * self.exploration)
    if explored.size and positive.size:
      clip = positive[min(int(positive.size * hp["clip_bound"]), positive.size - 1)]
      u_max, u_min = positive[-1], positive[0] * 0.999
      u_range = max(u_max - u_min, 1e-4)
      sc = (np.minimum(self.reward[explored], clip) - u_min) / u_range + np.sqrt(
        0.1 * math.log(cur) / self.last_round[explored]
      )
      sc = np.abs(penalised(sc, explored))
      exploit_len = min(num - explore_len, explored.size)
      order = np.argsort(-sc, kind="stable")
      cut = sc[order[min(exploit_len, order.size - 1)]] * hp["cut_off_util"]
      above = int((sc >= cut).sum())
      take = min(max(above, 10 * exploit_len + 1), order.size)
      pool = order[:take]
      exploit = explored[pool[_weighted_sample(rng, sc[pool], exploit_len)]]
    self.exploit_clients = exploit
    unexplored = cand[self.count[cand] == 0]
    explore = np.zeros(0, np.int64)
    if unexplored.size:
      init = penalised(self.reward[unexplored], unexplored)
      explore_len = min(unexplored.size, num - exploit.size)
      window = min(int(hp["sample_window"] * explore_len), unexplored.size)
      top = np.argsort(-init, kind="stable")[:window]
      explore = unexplored[top[_weighted_sample(rng, init[top], explore_len)]]
    self.explore_clients = explore
    return np.concatenate([explore, exploit]).astype(np.int64)

  def _pacer(self):
    hp = self.hp

    def mean_util(clients):
      ok = np.isin(clients, self.successful)
      return float(self.reward[clients[ok]].sum()) / (ok.sum() + 1e-4)

    step = hp["pacer_step"]
    self.explore_history = np.append(self.explore_history, mean_util(self.explore_clients))[-2 * step :]
    self.exploit_history = np.append(self.exploit_history, mean_util(self.exploit_clients))[-2 * step :]
    self.successful = np.zeros(0, np.int64)
    r = self.training_round
    if r >= 2 * step and r % step == 0:
      last = self.exploit_history[:-step].sum()
      now = self.exploit_history[-step:].sum()
      if abs(now - last) <= last * 0.1:
        self.round_threshold = min(100.0, self.round_threshold + hp["pacer_delta"])
      elif abs(now - last) >= last * 5:
        self.round_threshold = max(hp["pacer_delta"], self.round_threshold - hp["pacer_delta"])

  # ------------------------------------------------------------------ update

  def update(self, round_index, clients, mean_sq_losses, durations):
    clients = np.asarray(clients, np.int64)
    loss = np.asarray(mean_sq_losses, np.float64)
    if loss.shape != clients.shape or np.shape(durations) != clients.shape:
      raise ValueError("clients, mean_sq_losses and durations must align")
    if (loss < 0).any() or not np.isfinite(loss).all():
      raise ValueError("mean squared losses must be finite and >= 0")
    self.reward[clients] = self.samples[clients] * np.sqrt(loss)
    self.duration[clients] = np.asarray(durations, np.float64)
    self.last_round[clients] = max(round_index + 1, 1)
    self.count[clients] += 1
    self.successful = np.union1d(self.successful, clients)

  # ------------------------------------------------------------------ state

  _ARRAYS = (
    "samples",
    "reward",
    "duration",
    "last_round",
    "count",
    "exploit_history",
    "explore_history",
    "explore_clients",
    "exploit_clients",
    "successful",
  )
  _SCALARS = ("exploration", "round_threshold", "training_round", "selections")

  def state_dict(self) -> dict:
    d = {"name": self.name}
    d.update({k: getattr(self, k).copy() for k in self._ARRAYS})
    d.update({k: getattr(self, k) for k in self._SCALARS})
    d["hp"] = dict(self.hp)
    return d

  def load_state_dict(self, state):
    super().load_state_dict(state)
    for k in self._ARRAYS:
      setattr(self, k, np.array(state[k], dtype=getattr(self, k).dtype))
    self.exploration = float(state["exploration"])
    self.round_threshold = float(state["round_threshold"])
    self.training_round = int(state["training_round"])
    self.selections = int(state["selections"])
    self.hp = {k: type(v)(state["hp"][k]) for k, v in self.hp.items()}


def _weighted_sample(rng, weights, k) -> np.ndarray:
  """``k`` positions drawn without replacement with probability proportional
  to ``weights`` (successive draws, like ``choice(replace=False, p=...)``),
  via Gumbel top-k; zero weights come last, in order."""
  k = min(int(k), weights.size)
  if k <= 0:
    return np.zeros(0, np.int64)
  with np.errstate(divide="ignore"):
    keys = np.log(np.maximum(weights, 0.0)) + rng.gumbel(size=weights.size)
  return np.argsort(-keys, kind="stable")[:k]
