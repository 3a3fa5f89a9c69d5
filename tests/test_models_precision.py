"""bfloat16 mixed precision: the network computes in bfloat16, parameters and losses stay float32.

Tolerance: the bfloat16 loss (and every per-example loss) is within 2% (relative) plus 0.02
(absolute) of the float32 one, on the same float32 parameters. bfloat16 keeps 8 significant bits
(relative rounding 2^-8 = 0.4%), and the tiny networks here sum a few hundred products a layer.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from fedjaxscale import models

LOSS_TOL = dict(rtol=2e-2, atol=2e-2)


def key(seed=0):
  return jax.random.key(seed, impl="rbg")


def batch_for(shape, seed=0, classes=3, integer=False):
  rng = np.random.default_rng(seed)
  x = rng.integers(0, 256, shape).astype(np.uint8) if integer else rng.normal(size=shape).astype(np.float32)
  return {"x": x, "y": rng.integers(0, classes, shape[0]).astype(np.int32)}


ZOO = {
  "femnist_cnn": (lambda d: models.femnist_cnn(3, dense=8, compute_dtype=d), (4, 28, 28), True),
  "logistic_regression": (lambda d: models.logistic_regression(12, 3, compute_dtype=d), (6, 12), False),
  "mlp": (lambda d: models.mlp(12, 3, (16,), compute_dtype=d), (6, 12), False),
  "resnet18_gn": (
    lambda d: models.resnet18_gn(3, width=2, groups=2, image_shape=(8, 8), compute_dtype=d),
    (3, 8, 8),
    True,
  ),
  "speech_cnn": (
    lambda d: models.speech_cnn(3, channels=(4, 4), groups=2, num_mels=8, compute_dtype=d),
    (3, 9, 8),
    False,
  ),
}


@pytest.mark.parametrize("name", sorted(ZOO))
def test_bfloat16_computes_in_bfloat16_on_float32_params_and_returns_float32(name):
  """Traced only (nothing compiled), so it covers the ResNet cheaply."""
  factory, shape, integer = ZOO[name]
  fp32, bf16 = factory("float32"), factory("bfloat16")
  params = jax.eval_shape(bf16.init, key())
  assert jax.tree.map(lambda x: (x.shape, x.dtype), params) == jax.tree.map(
    lambda x: (x.shape, x.dtype), jax.eval_shape(fp32.init, key())
  )
  assert all(x.dtype == jnp.float32 for x in jax.tree.leaves(params))
  batch = batch_for(shape, integer=integer)
  mask = np.ones(shape[0], bool)
  jaxpr = str(jax.make_jaxpr(lambda p: bf16.loss(p, batch, mask))(params))
  assert "bf16" in jaxpr and "bf16" not in str(jax.make_jaxpr(lambda p: fp32.loss(p, batch, mask))(params))
  assert jax.eval_shape(lambda p: bf16.apply(p, batch, None, False), params).dtype == jnp.float32
  grads = jax.eval_shape(jax.grad(lambda p: bf16.loss(p, batch, mask)[0]), params)
  assert all(g.dtype == jnp.float32 for g in jax.tree.leaves(grads))


@pytest.mark.parametrize("name", sorted(set(ZOO) - {"resnet18_gn"}))  # compiling even a tiny ResNet-18 is slow
def test_bfloat16_loss_is_close_to_float32_on_the_same_params(name):
  factory, shape, integer = ZOO[name]
  fp32, bf16 = factory("float32"), factory("bfloat16")
  assert (fp32.compute_dtype, bf16.compute_dtype) == ("float32", "bfloat16")
  params = jax.jit(fp32.init)(key())
  params_bf16 = jax.jit(bf16.init)(key())
  # Same float32 parameters (names, shapes, values): the compute dtype is not part of a checkpoint.
  assert jax.tree.structure(params) == jax.tree.structure(params_bf16)
  for a, b in zip(jax.tree.leaves(params), jax.tree.leaves(params_bf16), strict=True):
    assert b.dtype == jnp.float32
    np.testing.assert_array_equal(a, b)

  batch = batch_for(shape, integer=integer)
  mask = np.ones(shape[0], bool)

  def loss_and_grad(model):
    return jax.jit(jax.value_and_grad(lambda p: model.loss(p, batch, mask), has_aux=True))

  (loss32, per32), _ = loss_and_grad(fp32)(params)
  (loss16, per16), grads16 = loss_and_grad(bf16)(params)
  assert loss16.dtype == per16.dtype == jnp.float32
  assert bf16.apply(params, batch, None, False).dtype == jnp.float32
  assert all(g.dtype == jnp.float32 and np.all(np.isfinite(g)) for g in jax.tree.leaves(grads16))
  np.testing.assert_allclose(loss16, loss32, **LOSS_TOL)
  np.testing.assert_allclose(per16, per32, **LOSS_TOL)


def test_compute_dtype_is_checked():
  with pytest.raises(ValueError, match="compute_dtype must be one of"):
    models.femnist_cnn(compute_dtype="float16")
  with pytest.raises(ValueError, match="compute_dtype"):
    models.logistic_regression(4, 2, compute_dtype="bf16")
