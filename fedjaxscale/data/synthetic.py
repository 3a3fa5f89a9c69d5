"""The Synthetic(alpha, beta) federated data of FedProx, written into the dataset layout.

Li, Sahu, Zaheer, Sanjabi, Talwalkar, Smith. "Federated Optimization in Heterogeneous
Networks." MLSys 2020, arXiv:1812.06127, Section 5.1; the same generator ships with LEAF.
Per client k, with d = 60 features and C = 10 classes::

    u_k ~ N(0, alpha),   W_k ~ N(u_k, 1) in R^{C x d},   b_k ~ N(u_k, 1) in R^C
    B_k ~ N(0, beta),    v_k ~ N(B_k, 1) in R^d
    x ~ N(v_k, Sigma),   Sigma = diag(j^-1.2 for j = 1..d)
    y = argmax(softmax(W_k x + b_k)) = argmax(W_k x + b_k)

Choices worth knowing:

* alpha and beta are used as *standard deviations*, as in the reference code
  (``np.random.normal(0, alpha, ...)`` in FedProx's ``generate_synthetic.py``), so
  Synthetic(0.5, 0.5) here is the data FedProx's published numbers used. The paper's
  ``N(0, alpha)`` reads like a variance; at alpha, beta in {0, 1} the two agree.
* u_k shifts every entry of W_k and b_k by the same scalar, which adds the same amount to
  every class's logit, so alpha does not change any label: label heterogeneity comes from
  beta (through v_k) and from each client's own W_k. This is the generator as published.
* Client sizes: ``floor(lognormal(mean=4, sigma=2)) + min_size`` with ``min_size=50``,
  optionally capped at ``max_size`` (FedProx's generator; heavy-tailed: median ~105, mean
  ~450, and the largest of 10,000 clients is typically tens of thousands). LEAF's own
  synthetic generator uses ``lognormal(3, 2) + 5`` capped at 1000: pass ``size_mean=3,
  min_size=5, max_size=1000``.
* ``iid=True`` is FedProx's Synthetic-IID: one W, b ~ N(0, 1) shared by all clients and
  v_k = 0 (x ~ N(0, Sigma) everywhere); alpha and beta are then ignored.
* The train/test split is per client (default 80/20): the last ``floor(test_fraction * n_k)``
  of client k's examples (capped at n_k - 1, so every client keeps a training example) go
  to test. Examples within a client are i.i.d., so no shuffle is needed. Every client
  appears in both splits, so client ids line up.

Everything is drawn from ``np.random.default_rng`` streams spawned from one seed (sizes,
client models, features separately), so the same arguments give identical bytes on disk.

Example::

    splits = write_synthetic('/tmp/synth', num_clients=1000, alpha=0.5, beta=0.5)
    splits['train'].client('f_00007')['x'].shape   # (n, 60)

This module imports NumPy only.
"""

from __future__ import annotations

import os
from typing import Any

import numpy as np

from fedjaxscale.data.dataset import (
  FederatedDataset,
  _check_destination,  # pylint: disable=protected-access
  write_dataset,
)

__all__ = ["make_synthetic", "synthetic_client_sizes", "write_synthetic"]

_PAPER = 'Li et al., "Federated Optimization in Heterogeneous Networks", MLSys 2020, arXiv:1812.06127'


def synthetic_client_sizes(
  num_clients: int,
  *,
  seed: int = 0,
  size_mean: float = 4.0,
  size_sigma: float = 2.0,
  min_size: int = 50,
  max_size: int | None = None,
) -> np.ndarray:
  """Power-law-like client sizes: ``floor(lognormal(size_mean, size_sigma)) + min_size``.

  Returns the same sizes `make_synthetic` uses for the same arguments.
  """
  _check_sizes_args(num_clients, min_size, max_size)
  rng = _streams(seed)[0]
  sizes = np.floor(rng.lognormal(size_mean, size_sigma, num_clients)).astype(np.int64)
  sizes += min_size
  if max_size is not None:
    np.minimum(sizes, max_size, out=sizes)
  return sizes


def make_synthetic(
  num_clients: int,
  *,
  alpha: float = 1.0,
  beta: float = 1.0,
  iid: bool = False,
  seed: int = 0,
  num_features: int = 60,
  num_classes: int = 10,
  size_mean: float = 4.0,
  size_sigma: float = 2.0,
  min_size: int = 50,
  max_size: int | None = None,
) -> tuple[np.ndarray, dict[str, np.ndarray], np.ndarray]:
  """Generates Synthetic(alpha, beta) in memory (see the module docstring for the model).

  Args:
    num_clients: number of clients N.
    alpha: std of u_k, the per-client model mean (does not affect labels; see above).
    beta: std of B_k, the per-client feature-mean shift.
    iid: FedProx's Synthetic-IID (shared model, identical feature distribution).
    seed: fixes everything.
    num_features, num_classes: d and C (60 and 10 in the paper).
    size_mean, size_sigma, min_size, max_size: client sizes, see `synthetic_client_sizes`.

  Returns:
    ``(client_ids, {'x': float32 [n, d], 'y': int32 [n]}, client_sizes int64 [N])`` with
    rows sorted by client and ids ``'f_00000', 'f_00001', ...``.
  """
  if alpha < 0 or beta < 0:
    raise ValueError(f"alpha and beta must be non-negative, got {alpha}, {beta}")
  if num_features < 1 or num_classes < 1:
    raise ValueError("num_features and num_classes must be positive")
  sizes = synthetic_client_sizes(
    num_clients, seed=seed, size_mean=size_mean, size_sigma=size_sigma, min_size=min_size, max_size=max_size
  )
  w, b, v = _client_models(
    num_clients, alpha=alpha, beta=beta, iid=iid, seed=seed, num_features=num_features, num_classes=num_classes
  )
  d, n_clients = num_features, num_clients

  # x = v_k + sqrt(Sigma) z, drawn for all rows in one call; float32 halves memory and is what
  # is stored, and labels are computed from the stored x so they agree with it exactly.
  n = int(sizes.sum())
  x = _streams(seed)[2].standard_normal((n, d), dtype=np.float32)
  x *= np.power(np.arange(1, d + 1, dtype=np.float64), -0.6).astype(np.float32)
  y = np.empty(n, np.int32)
  offsets = np.concatenate([[0], np.cumsum(sizes)])
  # One small matmul per client: gathering W per row would need n x C x d memory.
  for k in range(n_clients):
    s, e = offsets[k], offsets[k + 1]
    xk = x[s:e]
    xk += v[k].astype(np.float32)
    y[s:e] = np.argmax(xk @ w[k].T + b[k], axis=1)

  width = max(5, len(str(max(n_clients - 1, 0))))
  client_ids = np.array([f"f_{k:0{width}d}" for k in range(n_clients)], dtype=f"<U{width + 2}")
  return client_ids, {"x": x, "y": y}, sizes


def write_synthetic(
  root: str | os.PathLike,
  num_clients: int,
  *,
  alpha: float = 1.0,
  beta: float = 1.0,
  iid: bool = False,
  seed: int = 0,
  test_fraction: float = 0.2,
  overwrite: bool = False,
  **kwargs: Any,
) -> dict[str, FederatedDataset]:
  """Generates Synthetic(alpha, beta) and writes ``root/train`` and ``root/test``.

  Args:
    root: output directory (created if needed).
    num_clients, alpha, beta, iid, seed: as in `make_synthetic`.
    test_fraction: per-client fraction of examples in the test split (floor, capped so every
      client keeps at least one training example).
    overwrite: replace existing splits.
    **kwargs: further `make_synthetic` arguments (num_features, max_size, ...).

  Returns:
    ``{'train': FederatedDataset, 'test': FederatedDataset}``.
  """
  if not 0.0 <= test_fraction < 1.0:
    raise ValueError(f"test_fraction must be in [0, 1), got {test_fraction}")
  root = os.fspath(root)
  # Check both destinations before writing either, so a refusal leaves nothing behind.
  for split in ("train", "test"):
    _check_destination(os.path.join(root, split), overwrite)
  ids, features, sizes = make_synthetic(num_clients, alpha=alpha, beta=beta, iid=iid, seed=seed, **kwargs)
  n_test = np.minimum(np.floor(test_fraction * sizes).astype(np.int64), np.maximum(sizes - 1, 0))
  n_train = sizes - n_test
  # Position of each row within its client; the first n_train rows of a client are train.
  offsets = np.concatenate([[0], np.cumsum(sizes)])
  within = np.arange(int(sizes.sum())) - np.repeat(offsets[:-1], sizes)
  is_train = within < np.repeat(n_train, sizes)

  num_classes = int(kwargs.get("num_classes", 10))
  parameters = dict(
    num_clients=num_clients,
    alpha=float(alpha),
    beta=float(beta),
    iid=bool(iid),
    seed=int(seed),
    test_fraction=float(test_fraction),
    **kwargs,
  )
  if iid:
    parameters.update(alpha=None, beta=None)
  out = {}
  for split, mask, split_sizes in (("train", is_train, n_train), ("test", ~is_train, n_test)):
    provenance = {
      "generator": "fedjaxscale.data.synthetic",
      "name": "synthetic_iid" if iid else f"synthetic({alpha:g},{beta:g})",
      "reference": _PAPER,
      "split": split,
      "parameters": parameters,
    }
    out[split] = write_dataset(
      os.path.join(root, split),
      ids,
      {k: v[mask] for k, v in features.items()},
      split_sizes,
      label_names=[str(i) for i in range(num_classes)],
      provenance=provenance,
      overwrite=overwrite,
    )
  return out


def _client_models(
  num_clients: int,
  *,
  alpha: float,
  beta: float,
  iid: bool,
  seed: int,
  num_features: int,
  num_classes: int,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
  """Per-client W_k [N, C, d], b_k [N, C] and feature means v_k [N, d]."""
  rng = _streams(seed)[1]
  d, c, n = num_features, num_classes, num_clients
  if iid:
    w = np.broadcast_to(rng.standard_normal((1, c, d)), (n, c, d))
    b = np.broadcast_to(rng.standard_normal((1, c)), (n, c))
    return w, b, np.zeros((n, d))
  u = rng.normal(0.0, alpha, n)
  shift = rng.normal(0.0, beta, n)  # B_k
  w = u[:, None, None] + rng.standard_normal((n, c, d))
  b = u[:, None] + rng.standard_normal((n, c))
  v = shift[:, None] + rng.standard_normal((n, d))
  return w, b, v


def _streams(seed: int) -> list[np.random.Generator]:
  """Independent streams for sizes, client models and features: changing the sizes (e.g.
  max_size) leaves every client's model unchanged."""
  return [np.random.default_rng(s) for s in np.random.SeedSequence(seed).spawn(3)]


def _check_sizes_args(num_clients: int, min_size: int, max_size: int | None) -> None:
  if num_clients < 0:
    raise ValueError(f"num_clients must be non-negative, got {num_clients}")
  if min_size < 1:
    raise ValueError(f"min_size must be >= 1 (every client needs an example), got {min_size}")
  if max_size is not None and max_size < min_size:
    raise ValueError(f"max_size {max_size} < min_size {min_size}")
