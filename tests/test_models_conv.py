"""The switchable convolution: ``'patches'`` computes what ``'lax'`` computes, with the same parameters.

Every convolutional model of the zoo is checked at tiny sizes (widths of a few channels, 10x10 to
28x28 inputs) for equal outputs and gradients (1e-5) under ``jit`` and under ``vmap`` over
per-client parameters, which is how the engine runs them.
"""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax import lax

from fedjaxscale import models
from fedjaxscale.models import conv, from_linen
from fedjaxscale.models.vision import ResNetGN

TOL = dict(rtol=1e-5, atol=1e-5)


def key(seed=0):
  return jax.random.key(seed, impl="rbg")


def images(n, side, seed=0, channels=None):
  rng = np.random.default_rng(seed)
  shape = (n, side, side) if channels is None else (n, side, side, channels)
  return {"x": rng.integers(0, 256, shape).astype(np.uint8), "y": rng.integers(0, 3, n).astype(np.int32)}


def spectrograms(n, frames, seed=0):
  rng = np.random.default_rng(seed)
  return {"x": rng.normal(size=(n, frames, 8)).astype(np.float32), "y": rng.integers(0, 3, n).astype(np.int32)}


# name -> (model, batch). Odd sizes (11 frames, 10x10 images) exercise padding and the pooling fallback.
CONV_MODELS = {
  "femnist_cnn": (lambda: models.femnist_cnn(3, dense=8), lambda s: images(4, 28, s)),
  # resnet18_gn's network with one block per stage (two stages) instead of 2 x 4: compiling a full
  # ResNet-18 four times takes minutes. The ImageNet stem has a strided 7x7 convolution and an
  # overlapping (fallback) max-pool; the second stage a strided 3x3 and a 1x1 projection.
  "resnet_gn_imagenet": (
    lambda: from_linen(
      ResNetGN(3, (1, 1), width=2, groups=2, stem="imagenet"), {"x": np.zeros((1, 10, 10, 3))}, has_conv=True
    ),
    lambda s: images(3, 10, s, channels=3),
  ),
  "speech_cnn": (
    lambda: models.speech_cnn(3, channels=(4, 4, 4), groups=2, num_mels=8),
    lambda s: spectrograms(3, 11, s),
  ),
}


def loss_and_grad(model, name):
  def fn(params, batch):
    return jax.value_and_grad(lambda p: model.loss(p, batch, jnp.ones(len(batch["y"]), bool))[0])(params)

  return models.with_conv_implementation(fn, name)


def assert_trees_close(a, b, what):
  assert jax.tree.structure(a) == jax.tree.structure(b), what
  for (path, x), y in zip(jax.tree_util.tree_leaves_with_path(a), jax.tree.leaves(b), strict=True):
    np.testing.assert_allclose(x, y, **TOL, err_msg=f"{what} {jax.tree_util.keystr(path)}")


@pytest.mark.parametrize("name", sorted(CONV_MODELS))
def test_patches_and_lax_agree_on_params_outputs_and_gradients(name):
  factory, make_batch = CONV_MODELS[name]
  model = factory()
  assert model.has_conv
  with models.conv_implementation("lax"):
    params = jax.jit(model.init)(key())
  with models.conv_implementation("patches"):
    params_patches = jax.jit(model.init)(key())
  assert jax.tree.map(lambda x: (x.shape, x.dtype), params) == jax.tree.map(
    lambda x: (x.shape, x.dtype), params_patches
  )
  assert_trees_close(params, params_patches, "init")

  batch = make_batch(0)
  lax_out = jax.jit(loss_and_grad(model, "lax"))(params, batch)
  patches_out = jax.jit(loss_and_grad(model, "patches"))(params, batch)
  assert_trees_close(lax_out, patches_out, "jit (loss, grads)")

  # Two clients with their own parameters and data, as the engine's vmap runs them.
  stacked = jax.tree.map(lambda a, b: jnp.stack([a, b]), params, jax.jit(model.init)(key(1)))
  batches = jax.tree.map(lambda a, b: np.stack([a, b]), batch, make_batch(1))
  lax_out = jax.jit(jax.vmap(loss_and_grad(model, "lax")))(stacked, batches)
  patches_out = jax.jit(jax.vmap(loss_and_grad(model, "patches")))(stacked, batches)
  assert_trees_close(lax_out, patches_out, "vmap (loss, grads)")


def test_patches_under_vmap_over_weights_is_a_batched_matmul_not_a_grouped_convolution():
  model = models.femnist_cnn(3, dense=8)
  stacked = jax.vmap(model.init)(jax.random.split(key(), 2))
  batches = jax.tree.map(lambda a: np.stack([a, a]), images(2, 28))
  hlo = {n: jax.jit(jax.vmap(loss_and_grad(model, n))).lower(stacked, batches).as_text() for n in ("lax", "patches")}
  assert "feature_group_count" in hlo["lax"]  # what the patches path is there to avoid
  assert "convolution" not in hlo["patches"]


@pytest.mark.parametrize(
  "shape, kernel, strides, padding, dilation",
  [
    ((2, 9, 7, 3), (3, 3), (1, 1), "SAME", (1, 1)),
    ((2, 9, 7, 3), (3, 2), (2, 3), "VALID", (1, 1)),
    ((2, 9, 7, 3), (3, 3), (2, 2), ((1, 2), (0, 1)), (1, 1)),
    ((2, 9, 7, 3), (3, 3), (1, 1), "SAME", (2, 1)),
    ((2, 9, 7, 3), (1, 1), (2, 2), "VALID", (1, 1)),
    ((2, 12, 3), (5,), (2,), "SAME", (1,)),  # 1-D
  ],
)
def test_conv_patches_matches_lax_conv(shape, kernel, strides, padding, dilation):
  rng = np.random.default_rng(0)
  x = rng.normal(size=shape).astype(np.float32)
  w = rng.normal(size=(*kernel, shape[-1], 4)).astype(np.float32)
  dn = lax.conv_dimension_numbers(
    x.shape, w.shape, ("NHWC", "HWIO", "NHWC") if len(kernel) == 2 else ("NWC", "WIO", "NWC")
  )
  kwargs = dict(window_strides=strides, padding=padding, rhs_dilation=dilation, dimension_numbers=dn)
  np.testing.assert_allclose(conv.conv_patches(x, w, **kwargs), lax.conv_general_dilated(x, w, **kwargs), **TOL)


def test_conv_layer_has_nn_conv_parameters_and_outputs():
  x = np.random.default_rng(0).normal(size=(2, 6, 6, 3)).astype(np.float32)
  ours, flax_conv = conv.Conv(5, (3, 3), strides=2, padding=1), nn.Conv(5, (3, 3), strides=2, padding=1)
  params = ours.init(key(), x)
  assert_trees_close(params, flax_conv.init(key(), x), "init")
  for name in conv.IMPLEMENTATIONS:
    with models.conv_implementation(name):
      np.testing.assert_allclose(ours.apply(params, x), flax_conv.apply(params, x), **TOL, err_msg=name)


def test_conv_patches_refuses_what_it_does_not_implement():
  x, w = np.zeros((1, 4, 4, 2), np.float32), np.zeros((3, 3, 1, 2), np.float32)
  dn = lax.conv_dimension_numbers(x.shape, w.shape, ("NHWC", "HWIO", "NHWC"))
  with pytest.raises(NotImplementedError, match="grouped"):
    conv.conv_patches(x, w, (1, 1), "SAME", dimension_numbers=dn, feature_group_count=2)
  with pytest.raises(NotImplementedError, match="channels-last"):
    conv.conv_patches(np.zeros((1, 2, 4, 4), np.float32), w, (1, 1), "SAME")


@pytest.mark.parametrize("side, window, padding", [(8, 2, "VALID"), (8, 2, "SAME"), (7, 2, "SAME"), (7, 2, "VALID")])
def test_max_pool_matches_flax_in_value_and_gradient(side, window, padding):
  x = np.random.default_rng(0).normal(size=(2, side, side, 3)).astype(np.float32)

  def f(x, name):
    with models.conv_implementation(name):
      return conv.max_pool(x, (window, window), strides=(window, window), padding=padding)

  for name in conv.IMPLEMENTATIONS:
    want = nn.max_pool(x, (window, window), strides=(window, window), padding=padding)
    np.testing.assert_allclose(f(x, name), want, **TOL, err_msg=name)
    grad = jax.grad(lambda x, n=name: (f(x, n) ** 2).sum())(x)
    want_grad = jax.grad(lambda x: (nn.max_pool(x, (window,) * 2, strides=(window,) * 2, padding=padding) ** 2).sum())(
      x
    )
    np.testing.assert_allclose(grad, want_grad, **TOL, err_msg=name)


def test_context_manager_nests_restores_on_exception_and_checks_the_name():
  assert models.current_conv_implementation() == "lax"
  with models.conv_implementation("patches"):
    with models.conv_implementation("lax"):
      assert models.current_conv_implementation() == "lax"
    assert models.current_conv_implementation() == "patches"
    with pytest.raises(RuntimeError, match="boom"), models.conv_implementation("lax"):
      raise RuntimeError("boom")
    assert models.current_conv_implementation() == "patches"
  assert models.current_conv_implementation() == "lax"
  with pytest.raises(ValueError, match="unknown convolution implementation 'im2col'"):
    with models.conv_implementation("im2col"):
      pass
  with pytest.raises(ValueError, match="unknown convolution implementation"):
    models.with_conv_implementation(lambda: None, "cudnn")
  assert models.current_conv_implementation() == "lax"


def test_has_conv_only_on_convolutional_models():
  assert models.femnist_cnn().has_conv and models.speech_cnn().has_conv and models.resnet18_gn(10).has_conv
  for model in (models.logistic_regression(4, 2), models.mlp(4, 2), models.shakespeare_lstm()):
    assert not model.has_conv, model.name
