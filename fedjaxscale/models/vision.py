"""Convolutional networks for images and spectrograms: ResNet-18 with group norm, a speech CNN.

Both normalise with group normalisation, never batch norm: batch statistics of one client's
small non-IID batches are a poor estimate of the population's, and running averages would be
state that FedAvg would have to average too. Hsieh et al. (The Non-IID Data Quagmire of
Decentralized Machine Learning, ICML 2020, arXiv:1910.00189) show batch norm failing under
label skew and group norm recovering most of the loss; Reddi et al. (Adaptive Federated
Optimization, ICLR 2021, arXiv:2003.00295) train their CIFAR ResNet-18 with group norm of two
groups.

Images may arrive as uint8 (as converters store them) and are scaled to [0, 1] in the network.
"""

from collections.abc import Sequence
from typing import Any

import flax.linen as nn
import jax.numpy as jnp
import numpy as np

from fedjaxscale.models.conv import Conv, max_pool
from fedjaxscale.models.model import Model, from_linen
from fedjaxscale.models.zoo import _as_float, _compute_dtype

STEMS = ("auto", "imagenet", "cifar")


def _group_norm(groups: int, channels: int, name: str | None = None, **kwargs) -> nn.GroupNorm:
  if channels % groups:
    raise ValueError(f"group norm with {groups} groups needs channels divisible by it, got {channels}")
  return nn.GroupNorm(num_groups=groups, name=name, **kwargs)


class BasicBlock(nn.Module):
  """ResNet's two 3x3 convolutions with an identity (or 1x1 projection) shortcut."""

  features: int
  strides: int = 1
  groups: int = 2
  dtype: Any = jnp.float32  # compute dtype; parameters are always float32

  @nn.compact
  def __call__(self, x):
    shortcut = x
    dt = self.dtype
    y = Conv(self.features, (3, 3), (self.strides, self.strides), padding=1, use_bias=False, dtype=dt)(x)
    y = nn.relu(_group_norm(self.groups, self.features, dtype=dt)(y))
    y = Conv(self.features, (3, 3), padding=1, use_bias=False, dtype=dt)(y)
    y = _group_norm(self.groups, self.features, dtype=dt)(y)
    if self.strides != 1 or x.shape[-1] != self.features:
      shortcut = Conv(self.features, (1, 1), (self.strides, self.strides), use_bias=False, name="proj", dtype=dt)(x)
      shortcut = _group_norm(self.groups, self.features, name="proj_norm", dtype=dt)(shortcut)
    return nn.relu(y + shortcut)


class ResNetGN(nn.Module):
  """ResNet (He et al., CVPR 2016, arXiv:1512.03385) with group norm in place of batch norm.

  ``stem``: ``'imagenet'`` (7x7 stride-2 convolution and 3x3 stride-2 max-pool, for large
  images such as OpenImage's 224x224) or ``'cifar'`` (one 3x3 stride-1 convolution, for 28x28 or
  32x32 images, which the ImageNet stem would shrink to 7x7 before the first block).
  """

  num_classes: int
  stage_sizes: Sequence[int] = (2, 2, 2, 2)
  width: int = 64
  groups: int = 2
  stem: str = "cifar"
  dtype: Any = jnp.float32  # compute dtype; parameters are always float32

  @nn.compact
  def __call__(self, x, train: bool = False):
    dt = self.dtype
    x = _as_float(x, dt)
    if x.ndim == 3:  # [batch, H, W] grayscale -> add the channel axis
      x = x[..., None]
    if self.stem not in ("imagenet", "cifar"):
      raise ValueError(f"unknown stem {self.stem!r}; expected 'imagenet' or 'cifar'")
    if self.stem == "imagenet":
      x = Conv(self.width, (7, 7), (2, 2), padding=3, use_bias=False, name="stem", dtype=dt)(x)
      x = nn.relu(_group_norm(self.groups, self.width, name="stem_norm", dtype=dt)(x))
      x = max_pool(x, (3, 3), strides=(2, 2), padding=((1, 1), (1, 1)))
    else:
      x = Conv(self.width, (3, 3), padding=1, use_bias=False, name="stem", dtype=dt)(x)
      x = nn.relu(_group_norm(self.groups, self.width, name="stem_norm", dtype=dt)(x))
    for i, blocks in enumerate(self.stage_sizes):
      for j in range(blocks):
        strides = 2 if i > 0 and j == 0 else 1
        x = BasicBlock(self.width * 2**i, strides, self.groups, dt, name=f"stage{i + 1}_block{j + 1}")(x)
    x = jnp.mean(x, axis=(1, 2), dtype=jnp.float32)  # pool in float32, whatever the compute dtype
    return nn.Dense(self.num_classes, name="head", dtype=dt)(x).astype(jnp.float32)


def resnet18_gn(
  num_classes: int,
  *,
  groups: int = 2,
  width: int = 64,
  stem: str = "auto",
  image_shape: Sequence[int] = (32, 32, 3),
  compute_dtype: str = "float32",
) -> Model:
  """ResNet-18 with group normalisation, FedScale's model class for FEMNIST and OpenImage.

  Deep Residual Learning for Image Recognition. K. He, X. Zhang, S. Ren, J. Sun. CVPR 2016,
  arXiv:1512.03385; batch norm replaced by group norm (Wu & He, ECCV 2018, arXiv:1803.08494) as
  Hsieh et al. (ICML 2020) recommend for non-IID federated data and Reddi et al. (ICLR 2021) use.
  Four stages of two basic blocks, widths ``width * (1, 2, 4, 8)``, global average pooling, a
  dense head. 11,220,132 parameters for 100 classes on 32x32x3 images (``'cifar'`` stem); the
  ImageNet-stem count for 1,000 classes equals torchvision's resnet18, 11,689,512.

  Args:
    num_classes: output classes.
    groups: groups per group-norm layer (Reddi et al.: 2; Wu & He's default is 32). Must divide
      ``width``.
    width: channels of the first stage (64 in the paper; small for tests).
    stem: ``'imagenet'``, ``'cifar'`` (see ``ResNetGN``) or ``'auto'`` (default): ``'cifar'``
      when the smaller side of ``image_shape`` is under 64 pixels, else ``'imagenet'``. Chosen
      once, here, so the parameters never depend on the size of the images fed later.
    image_shape: ``[H, W, C]`` or ``[H, W]`` of one example, to trace at ``init`` and choose the
      stem; the parameters depend only on the channel count, so images of any size with the same
      channels run with them.
    compute_dtype: ``"float32"`` or ``"bfloat16"``: the dtype layers compute in; parameters
      stay float32 (``models.zoo``'s docstring).

  Returns:
    A ``Model``: ``x`` uint8 (scaled to [0, 1]) or float ``[batch, H, W(, C)]``, ``y`` int32.

  Example::

    model = resnet18_gn(62, image_shape=(28, 28))   # FEMNIST
    logits = model.apply(model.init(jax.random.key(0)), {'x': images}, None, False)
  """
  if stem not in STEMS:
    raise ValueError(f"unknown stem {stem!r}; expected one of {STEMS}")
  for w in (width * 2**i for i in range(4)):
    if w % groups:
      raise ValueError(f"groups={groups} must divide every stage width, got width={width}")
  if stem == "auto":
    stem = "cifar" if min(image_shape[:2]) < 64 else "imagenet"
  dtype = _compute_dtype(compute_dtype)
  sample = np.zeros((1, *image_shape), np.float32)
  return from_linen(
    ResNetGN(num_classes, (2, 2, 2, 2), width, groups, stem, dtype),
    {"x": sample},
    num_classes=num_classes,
    name="resnet18_gn",
    has_conv=True,
    compute_dtype=compute_dtype,
  )


class SpeechCNN(nn.Module):
  """Convolution blocks (3x3 conv, group norm, ReLU, 2x2 max-pool) over a log-mel spectrogram.

  The last block is followed by global average pooling over time and frequency, so the network
  accepts any number of frames.
  """

  num_classes: int = 35
  channels: Sequence[int] = (32, 64, 128, 128)
  groups: int = 8
  normalize: bool = True
  dtype: Any = jnp.float32  # compute dtype; parameters are always float32

  @nn.compact
  def __call__(self, x, train: bool = False):
    x = x.astype(jnp.float32)
    if x.ndim == 3:  # [batch, frames, mels] -> add the channel axis
      x = x[..., None]
    if self.normalize:
      # Log-mel levels depend on recording gain; per-utterance standardisation removes it.
      mean = x.mean(axis=(1, 2, 3), keepdims=True)
      std = x.std(axis=(1, 2, 3), keepdims=True)
      x = (x - mean) / (std + 1e-5)
    x = x.astype(self.dtype)
    for i, c in enumerate(self.channels):
      x = Conv(c, (3, 3), padding=1, use_bias=False, dtype=self.dtype)(x)
      x = nn.relu(_group_norm(self.groups, c, dtype=self.dtype)(x))
      if i < len(self.channels) - 1:
        x = max_pool(x, (2, 2), strides=(2, 2), padding="SAME")
    x = jnp.mean(x, axis=(1, 2), dtype=jnp.float32)
    return nn.Dense(self.num_classes, name="head", dtype=self.dtype)(x).astype(jnp.float32)


def speech_cnn(
  num_classes: int = 35,
  *,
  channels: Sequence[int] = (32, 64, 128, 128),
  groups: int = 8,
  num_mels: int = 40,
  normalize: bool = True,
  compute_dtype: str = "float32",
) -> Model:
  """A small CNN for keyword spotting on log-mel features (Google Speech Commands, 35 words).

  In the spirit of small-footprint keyword-spotting CNNs (Sainath & Parada, Interspeech 2015):
  four 3x3 convolution blocks with group norm and max-pooling, global average pooling, a dense
  head; 245,123 parameters at the defaults. FedScale trains a ResNet-34 on 32x32 spectrograms for
  this task; ``resnet18_gn(35, image_shape=(frames, 40))`` is the heavier choice here.

  Args:
    num_classes: keywords (Speech Commands v2: 35).
    channels: output channels of the convolution blocks.
    groups: groups per group-norm layer; must divide every entry of ``channels``.
    num_mels: mel bins per frame, to trace at ``init`` (parameters do not depend on it).
    normalize: standardise each utterance's features (mean 0, std 1) first.
    compute_dtype: ``"float32"`` or ``"bfloat16"`` (parameters stay float32).

  Returns:
    A ``Model``: ``x`` float32 ``[batch, frames, num_mels]``, ``y`` int32.

  Example::

    model = speech_cnn()
    logits = model.apply(model.init(jax.random.key(0)), {'x': np.zeros((8, 101, 40), np.float32)}, None, False)
  """
  for c in channels:
    if c % groups:
      raise ValueError(f"groups={groups} must divide every entry of channels, got {tuple(channels)}")
  return from_linen(
    SpeechCNN(num_classes, tuple(channels), groups, normalize, _compute_dtype(compute_dtype)),
    {"x": np.zeros((1, 8, num_mels), np.float32)},
    num_classes=num_classes,
    name="speech_cnn",
    has_conv=True,
    compute_dtype=compute_dtype,
  )
