"""Models used by the benchmarks this project reproduces.

Images may arrive as uint8 (as converters store them): networks scale them to [0, 1] themselves,
so normalisation runs on the device inside the compiled program, never per round in Python.

**Mixed precision.** Every factory here and in ``vision.py`` takes ``compute_dtype``
(``"float32"``, the default, or ``"bfloat16"``): flax's ``dtype`` (the dtype layers compute in)
while ``param_dtype`` stays float32. Parameters, and so gradients, client deltas and the
aggregate, are float32 whatever the compute dtype; the logits are cast back to float32 before
the loss, so log-softmax and the loss are float32 too. ``Model.compute_dtype`` records the choice.
"""

from collections.abc import Sequence
from typing import Any

import flax.linen as nn
import jax.numpy as jnp
import numpy as np

from fedjaxscale.models.conv import Conv, max_pool
from fedjaxscale.models.model import Model, from_linen

COMPUTE_DTYPES = ("float32", "bfloat16")


def _as_float(x, dtype: Any = jnp.float32):
  if jnp.issubdtype(x.dtype, jnp.integer):
    return (x.astype(jnp.float32) / 255.0).astype(dtype)
  return x.astype(dtype)


def _compute_dtype(compute_dtype: str) -> Any:
  """The jnp dtype of a ``compute_dtype`` name; a ValueError naming the argument otherwise."""
  if compute_dtype not in COMPUTE_DTYPES:
    raise ValueError(f"compute_dtype must be one of {COMPUTE_DTYPES}, got {compute_dtype!r}")
  return jnp.dtype(compute_dtype)


class _Dense(nn.Module):
  hidden: Sequence[int]
  num_classes: int
  dtype: Any = jnp.float32  # compute dtype; parameters are always float32

  @nn.compact
  def __call__(self, x, train: bool = False):
    x = _as_float(x, self.dtype).reshape((x.shape[0], -1))
    for width in self.hidden:
      x = nn.relu(nn.Dense(width, dtype=self.dtype)(x))
    return nn.Dense(self.num_classes, dtype=self.dtype)(x).astype(jnp.float32)


def logistic_regression(num_features: int, num_classes: int, *, compute_dtype: str = "float32") -> Model:
  """Multinomial logistic regression (the FedProx paper's model for its Synthetic data).

  ``compute_dtype``: ``"float32"`` or ``"bfloat16"`` (see the module docstring).
  """
  return from_linen(
    _Dense((), num_classes, _compute_dtype(compute_dtype)),
    {"x": np.zeros((1, num_features), np.float32)},
    num_classes=num_classes,
    name="logistic_regression",
    compute_dtype=compute_dtype,
  )


def mlp(
  num_features: int, num_classes: int, hidden: Sequence[int] = (200, 200), *, compute_dtype: str = "float32"
) -> Model:
  """A ReLU multi-layer perceptron (McMahan et al. 2017's 2NN uses hidden=(200, 200)).

  ``compute_dtype``: ``"float32"`` or ``"bfloat16"`` (see the module docstring).
  """
  return from_linen(
    _Dense(tuple(hidden), num_classes, _compute_dtype(compute_dtype)),
    {"x": np.zeros((1, num_features), np.float32)},
    num_classes=num_classes,
    name="mlp",
    compute_dtype=compute_dtype,
  )


class FemnistCNN(nn.Module):
  """The LEAF / Reddi et al. EMNIST CNN: conv5x5(32)-pool-conv5x5(64)-pool-dense(2048)-dense."""

  num_classes: int = 62
  dense: int = 2048
  dtype: Any = jnp.float32  # compute dtype; parameters are always float32

  @nn.compact
  def __call__(self, x, train: bool = False):
    x = _as_float(x, self.dtype)
    if x.ndim == 3:  # [batch, 28, 28] -> add the channel axis
      x = x[..., None]
    x = nn.relu(Conv(32, (5, 5), padding="SAME", dtype=self.dtype)(x))
    x = max_pool(x, (2, 2), strides=(2, 2))
    x = nn.relu(Conv(64, (5, 5), padding="SAME", dtype=self.dtype)(x))
    x = max_pool(x, (2, 2), strides=(2, 2))
    x = x.reshape((x.shape[0], -1))
    x = nn.relu(nn.Dense(self.dense, dtype=self.dtype)(x))
    return nn.Dense(self.num_classes, dtype=self.dtype)(x).astype(jnp.float32)


def femnist_cnn(num_classes: int = 62, dense: int = 2048, *, compute_dtype: str = "float32") -> Model:
  """The FEMNIST CNN of LEAF (Caldas et al. 2018) as used by Reddi et al. (ICLR 2021) for EMNIST.

  Inputs ``x``: ``[batch, 28, 28]`` or ``[batch, 28, 28, 1]``, uint8 or float in [0, 1].
  ``compute_dtype``: ``"float32"`` or ``"bfloat16"`` (see the module docstring).
  """
  return from_linen(
    FemnistCNN(num_classes, dense, _compute_dtype(compute_dtype)),
    {"x": np.zeros((1, 28, 28, 1), np.float32)},
    num_classes=num_classes,
    name="femnist_cnn",
    has_conv=True,
    compute_dtype=compute_dtype,
  )


def femnist_cnn_flops_per_example(dense: int = 2048, num_classes: int = 62) -> int:
  """Forward multiply-add FLOPs (x2) of ``femnist_cnn`` for one 28x28 example."""
  conv1 = 28 * 28 * 32 * 5 * 5 * 1 * 2
  conv2 = 14 * 14 * 64 * 5 * 5 * 32 * 2
  dense1 = 7 * 7 * 64 * dense * 2
  dense2 = dense * num_classes * 2
  return conv1 + conv2 + dense1 + dense2
