"""Convolutions that stay dense matmuls under ``vmap`` over per-client weights.

Federated simulation trains many clients at once by ``vmap``-ing local training over a leading
client axis of the *parameters* as well as the data. ``lax.conv_general_dilated`` under such a
``vmap`` becomes one grouped convolution (``feature_group_count`` = clients), which XLA:CPU runs
several times slower than the same work as ordinary convolutions; a dense matmul under the same
``vmap`` becomes a batched matmul, which it runs well. So the zoo's convolutional models use
``Conv`` below: flax's ``nn.Conv`` (same fields, same parameters, same names and initialisers,
so parameters and checkpoints are interchangeable with ``nn.Conv``'s) whose convolution primitive
is chosen when the model is traced:

* ``"lax"`` (default): ``lax.conv_general_dilated``, flax's own.
* ``"patches"``: im2col by strided slicing (one slice per kernel tap, channels-last), then one
  ``dot_general`` with the kernel reshaped to ``[taps * in_features, features]``. The same sum of
  products in another order: outputs agree with ``"lax"`` to float32 rounding.

The choice is a context variable read at *trace* time::

  with conv_implementation("patches"):
    step = jax.jit(jax.vmap(train_step, in_axes=(0, 0)))  # traced (and compiled) here
    step(params, batch)

Because it is read at trace time, ``jax.jit`` does not see it in its cache key: a function traced
once under one implementation keeps it. Trace each choice from a distinct callable (or enter the
context inside the traced function, as ``with_conv_implementation`` does) rather than re-calling
one jitted function under another context.

``max_pool`` follows the same switch: under ``"patches"``, non-overlapping windows that tile the
input are taken as a reshape and a max (whose gradient is a dense compare instead of XLA's
``select_and_scatter``); anything else falls back to ``nn.max_pool``.
"""

import contextlib
import contextvars
import functools
import itertools
from collections.abc import Callable, Iterator, Sequence

import flax.linen as nn
import jax.numpy as jnp
from jax import lax

IMPLEMENTATIONS = ("lax", "patches")

_IMPLEMENTATION: contextvars.ContextVar[str] = contextvars.ContextVar("fedjaxscale_conv_implementation", default="lax")


@contextlib.contextmanager
def conv_implementation(name: str) -> Iterator[None]:
  """Selects the convolution primitive of ``Conv`` (and ``max_pool``) for models traced inside.

  Args:
    name: ``"lax"`` or ``"patches"`` (see the module docstring).

  Yields:
    Nothing; the previous choice is restored on exit, also when the body raises.

  Example::

    with conv_implementation("patches"):
      logits = jax.jit(jax.vmap(lambda p, b: model.apply(p, b, None, False)))(params, batches)
  """
  if name not in IMPLEMENTATIONS:
    raise ValueError(f"unknown convolution implementation {name!r}; expected one of {IMPLEMENTATIONS}")
  token = _IMPLEMENTATION.set(name)
  try:
    yield
  finally:
    _IMPLEMENTATION.reset(token)


def current_conv_implementation() -> str:
  """The implementation a model traced now would use."""
  return _IMPLEMENTATION.get()


def with_conv_implementation(fn: Callable, name: str) -> Callable:
  """``fn`` traced under ``conv_implementation(name)`` wherever it is called (a new callable each time).

  A new function object per call, so ``jax.jit`` of the result never shares a cache entry with
  ``fn`` traced under another implementation.
  """
  if name not in IMPLEMENTATIONS:
    raise ValueError(f"unknown convolution implementation {name!r}; expected one of {IMPLEMENTATIONS}")

  @functools.wraps(fn)
  def wrapped(*args, **kwargs):
    with conv_implementation(name):
      return fn(*args, **kwargs)

  return wrapped


def _channels_last(dimension_numbers, ndim: int) -> bool:
  """Whether ``dimension_numbers`` are flax's: input and output ``N...C``, kernel ``...IO``."""
  if dimension_numbers is None:
    return False
  lhs, rhs, out = lax.conv_dimension_numbers((1,) * ndim, (1,) * ndim, dimension_numbers)
  channels_last = (0, ndim - 1, *range(1, ndim - 1))
  return lhs == channels_last and out == channels_last and rhs == (ndim - 1, ndim - 2, *range(ndim - 2))


def conv_patches(
  lhs,
  rhs,
  window_strides: Sequence[int],
  padding,
  lhs_dilation: Sequence[int] | None = None,
  rhs_dilation: Sequence[int] | None = None,
  dimension_numbers=None,
  feature_group_count: int = 1,
  batch_group_count: int = 1,
  precision=None,
  preferred_element_type=None,
):
  """``lax.conv_general_dilated`` for channels-last input and ``...IO`` kernels, as im2col + matmul.

  Same signature as ``lax.conv_general_dilated`` (so flax can call it); supports strides, padding
  (a string or pairs) and kernel dilation. Input dilation and feature or batch groups raise
  ``NotImplementedError``.
  """
  nd = lhs.ndim - 2
  if not _channels_last(dimension_numbers, lhs.ndim):
    raise NotImplementedError(f"patch convolution needs channels-last dimension numbers, got {dimension_numbers}")
  if feature_group_count != 1 or batch_group_count != 1:
    raise NotImplementedError("patch convolution does not support grouped convolutions")
  if lhs_dilation is not None and any(d != 1 for d in lhs_dilation):
    raise NotImplementedError("patch convolution does not support input dilation")
  strides = tuple(window_strides)
  dilation = tuple(rhs_dilation) if rhs_dilation is not None else (1,) * nd
  ksize = rhs.shape[:nd]
  in_features, features = rhs.shape[nd], rhs.shape[nd + 1]
  spatial = lhs.shape[1:-1]
  dilated = tuple((k - 1) * d + 1 for k, d in zip(ksize, dilation, strict=True))
  pads = lax.padtype_to_pads(spatial, dilated, strides, padding) if isinstance(padding, str) else tuple(padding)
  if any(p != (0, 0) for p in pads):
    lhs = lax.pad(lhs, jnp.zeros((), lhs.dtype), [(0, 0, 0), *((lo, hi, 0) for lo, hi in pads), (0, 0, 0)])
  padded = lhs.shape[1:-1]
  out = tuple((n - dk) // s + 1 for n, dk, s in zip(padded, dilated, strides, strict=True))
  n, c = lhs.shape[0], lhs.shape[-1]
  taps = []
  for offsets in itertools.product(*(range(k) for k in ksize)):
    start = (0, *(o * d for o, d in zip(offsets, dilation, strict=True)), 0)
    limit = (n, *(st + (m - 1) * s + 1 for st, m, s in zip(start[1:-1], out, strides, strict=True)), c)
    taps.append(lax.slice(lhs, start, limit, (1, *strides, 1)))
  # [N, *out, taps, C] -> [N, *out, taps * C]: the kernel's own (taps..., I) row-major order.
  patches = taps[0] if len(taps) == 1 else jnp.stack(taps, axis=-2).reshape((n, *out, len(taps) * c))
  kernel = rhs.reshape((len(taps) * in_features, features))
  return lax.dot_general(
    patches,
    kernel,
    (((patches.ndim - 1,), (0,)), ((), ())),
    precision=precision,
    preferred_element_type=preferred_element_type,
  )


def conv_general_dilated(*args, **kwargs):
  """``lax.conv_general_dilated`` or ``conv_patches``, as ``conv_implementation`` says at trace time."""
  if _IMPLEMENTATION.get() == "patches":
    return conv_patches(*args, **kwargs)
  return lax.conv_general_dilated(*args, **kwargs)


class Conv(nn.Conv):
  """``nn.Conv`` whose primitive follows ``conv_implementation``; same fields and parameters.

  Named ``Conv`` so that flax's automatic names (``Conv_0``, ...) match ``nn.Conv``'s: swapping
  one for the other changes neither the parameter tree nor the initial values.
  """

  conv_general_dilated: Callable = conv_general_dilated


def max_pool(x, window_shape: Sequence[int], strides: Sequence[int] | None = None, padding="VALID"):
  """``nn.max_pool``; under ``"patches"``, tiling windows (window = strides) are a reshape + max.

  The reshape path is taken only when it is exactly ``nn.max_pool``'s result: no padding needed
  (``"VALID"``, or ``"SAME"``/zero pairs with every spatial size a multiple of the window).
  At ties the gradient is shared among the maxima instead of going to the first one.
  """
  window_shape = tuple(window_shape)
  strides = tuple(strides) if strides is not None else (1,) * len(window_shape)
  spatial = x.shape[1 : 1 + len(window_shape)]
  no_padding = padding in ("VALID", "SAME") or all(tuple(p) == (0, 0) for p in padding)
  tiles = (
    strides == window_shape
    and all(s % w == 0 for s, w in zip(spatial, window_shape, strict=True))
    and x.ndim == len(window_shape) + 2
  )
  if _IMPLEMENTATION.get() != "patches" or not (no_padding and tiles):
    return nn.max_pool(x, window_shape, strides=strides, padding=padding)
  split = [x.shape[0]]
  for s, w in zip(spatial, window_shape, strict=True):
    split += [s // w, w]
  y = x.reshape((*split, x.shape[-1]))
  return y.max(axis=tuple(range(2, 2 + 2 * len(window_shape), 2)))
