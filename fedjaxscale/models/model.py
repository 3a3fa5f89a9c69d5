"""``Model``: a network as pure functions, with masked per-example loss and metrics.

The training code never touches flax directly: it calls ``model.init(rng)`` for parameters,
``model.loss(params, batch, mask, rng)`` for the masked mean training loss, and
``model.evaluate(params, batch, mask)`` for mergeable metric sums. Masks matter: padded
examples (partial last batches, padding clients) must never reach a loss or a metric.
"""

import dataclasses
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import optax

from fedjaxscale.core.types import Array, Batch, Params, PRNGKey

# Per-example function of (batch, predictions) -> [batch]. Sequence models fold their token mask
# (padding) into it: see ``models/sequence.py``.
PerExampleFn = Callable[[Batch, Array], Array]


@dataclasses.dataclass(frozen=True)
class Model:
  """A model as pure functions.

  Attributes:
    init: ``rng -> params``.
    apply: ``(params, batch, rng, train) -> predictions`` (logits for classifiers). ``rng`` may be
      None when ``train`` is False; it feeds dropout and similar.
    per_example_loss: ``(batch, predictions) -> loss [batch]``.
    metrics: name -> ``(batch, predictions) -> value [batch]``; averaged over real examples.
    input_keys: the batch features the network reads (for validation and documentation).
    label_key: the feature holding the target.
    num_classes: output classes, when the model is a classifier (for validation).
    name: for logs and checkpoints.
    has_conv: whether the network convolves with ``models.conv.Conv``, so that tracing it under
      ``conv_implementation('patches')`` instead of ``'lax'`` can change its speed (never its
      parameters or, beyond float rounding, its outputs).
    compute_dtype: the dtype the network computes in (``"float32"`` or ``"bfloat16"``);
      parameters, gradients and losses are float32 either way.
  """

  init: Callable[[PRNGKey], Params]
  apply: Callable[[Params, Batch, PRNGKey | None, bool], Array]
  per_example_loss: PerExampleFn
  metrics: Mapping[str, PerExampleFn]
  input_keys: tuple[str, ...] = ("x",)
  label_key: str = "y"
  num_classes: int | None = None
  name: str = "model"
  has_conv: bool = False
  compute_dtype: str = "float32"

  def loss(self, params: Params, batch: Batch, mask: Array, rng: PRNGKey | None = None) -> tuple[Array, Array]:
    """Masked mean loss over the real examples of one batch, and the per-example losses.

    Returns ``(mean_loss, per_example_loss * mask)``. A batch with no real example has loss 0
    (and so a zero gradient), never NaN.
    """
    preds = self.apply(params, batch, rng, True)
    per_example = self.per_example_loss(batch, preds)
    mask = mask.astype(per_example.dtype)
    per_example = per_example * mask
    return per_example.sum() / jnp.maximum(mask.sum(), 1.0), per_example

  def evaluate_per_example(self, params: Params, batch: Batch, mask: Array) -> dict[str, Array]:
    """Per-example ``count`` (the mask), ``loss`` and metrics, zero on padding examples."""
    preds = self.apply(params, batch, None, False)
    mask = mask.astype(jnp.float32)
    out = {"count": mask, "loss": self.per_example_loss(batch, preds) * mask}
    for name, fn in self.metrics.items():
      out[name] = fn(batch, preds).astype(jnp.float32) * mask
    return out

  def evaluate(self, params: Params, batch: Batch, mask: Array) -> dict[str, Array]:
    """Sums of loss and metrics over the real examples, with their ``count``: mergeable by adding."""
    return {k: v.sum() for k, v in self.evaluate_per_example(params, batch, mask).items()}


def softmax_cross_entropy(label_key: str = "y") -> PerExampleFn:
  def fn(batch, logits):
    return optax.softmax_cross_entropy_with_integer_labels(logits.astype(jnp.float32), batch[label_key])

  return fn


def accuracy(label_key: str = "y") -> PerExampleFn:
  def fn(batch, logits):
    return (jnp.argmax(logits, axis=-1) == batch[label_key]).astype(jnp.float32)

  return fn


def from_linen(
  module: nn.Module,
  sample_batch: Mapping[str, Any],
  *,
  input_keys: Sequence[str] = ("x",),
  label_key: str = "y",
  num_classes: int | None = None,
  per_example_loss: PerExampleFn | None = None,
  metrics: Mapping[str, PerExampleFn] | None = None,
  name: str | None = None,
  has_conv: bool = False,
  compute_dtype: str = "float32",
) -> Model:
  """Wraps a flax linen classifier whose ``__call__(*inputs, train)`` returns logits.

  Args:
    module: the network.
    sample_batch: example arrays (any batch size) used to trace shapes at ``init``.
    input_keys: batch features passed positionally to the module.
    label_key: the integer label feature.
    num_classes: the number of output classes.
    per_example_loss: defaults to softmax cross-entropy on ``label_key``.
    metrics: defaults to ``{'accuracy': ...}``.
    name: for logs and checkpoints.
    has_conv: the module uses ``models.conv.Conv`` (see ``Model.has_conv``).
    compute_dtype: recorded as ``Model.compute_dtype``; the module must already compute in it.

  Returns:
    A ``Model``.

  Example::

    model = from_linen(MyNet(), {'x': np.zeros((1, 60), np.float32)}, num_classes=10)
    params = model.init(jax.random.key(0))
  """
  input_keys = tuple(input_keys)
  sample = tuple(jnp.asarray(sample_batch[k]) for k in input_keys)

  def init_params(rng, *sample):
    params_rng, dropout_rng = jax.random.split(rng)
    return module.init({"params": params_rng, "dropout": dropout_rng}, *sample, train=False)["params"]

  # Called eagerly, init is one program built without XLA's backend optimizations (it runs once):
  # op by op, flax's init compiles every layer's ops one by one, and optimized, the inlined random
  # number generation of every parameter compiles for long (a ResNet-18 on a CPU: 26 s op by op,
  # 16 s optimized, 3 s like this). Under a caller's jit or vmap it is traced as it is.
  init_compiled = jax.jit(init_params, compiler_options={"xla_backend_optimization_level": 0})

  def init(rng):
    if isinstance(rng, jax.core.Tracer):
      return init_params(rng, *sample)
    return init_compiled(rng, *sample)

  def apply(params, batch, rng, train):
    rngs = {"dropout": rng} if rng is not None else None
    return module.apply({"params": params}, *(batch[k] for k in input_keys), train=train, rngs=rngs)

  return Model(
    init=init,
    apply=apply,
    per_example_loss=per_example_loss or softmax_cross_entropy(label_key),
    metrics=dict(metrics) if metrics is not None else {"accuracy": accuracy(label_key)},
    input_keys=input_keys,
    label_key=label_key,
    num_classes=num_classes,
    name=name or type(module).__name__,
    has_conv=has_conv,
    compute_dtype=compute_dtype,
  )
