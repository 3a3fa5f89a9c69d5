"""Recurrent language models: Shakespeare next-character and StackOverflow next-word LSTMs.

Two shapes of task:

* **LEAF Shakespeare** (Caldas et al., "LEAF: A Benchmark for Federated Settings", 2018,
  arXiv:1812.01097): ``x`` is int32 ``[80]`` characters, ``y`` the int32 id of the character that
  follows; the network reads the whole window and classifies from its last output.
  ``shakespeare_lstm``.
* **Sequence-to-sequence** next-token prediction as FedJAX and TFF prepare Shakespeare and
  StackOverflow: ``x`` and ``y`` are int32 ``[T]``, ``y`` is ``x`` shifted by one, and sequences
  are right-padded with the pad id. ``shakespeare_seq_lstm``, ``stackoverflow_lstm``.

**Padding and the per-example loss.** ``Model.per_example_loss`` returns one value per example, so
a sequence example's loss is the *mean* cross-entropy over its non-pad target tokens (an example
with no real token has loss 0; the cohort's example mask should exclude it anyway). Training thus
weights every sequence equally, however many real tokens it holds, not every token: a short tail
chunk counts as much as a full one. That keeps the loss on the contract's per-example scale (so
mixing, Oort's loss statistics and FedProx's ``mu`` mean the same thing as for classifiers) and
lies between FedJAX's choices (its Shakespeare loss divides by the padded length ``T``, its
StackOverflow loss sums over tokens). Token-weighted numbers are available for evaluation:
``num_tokens``, ``num_correct`` and ``sum_token_loss`` are per-example counts, and since evaluation
averages every metric over the same examples, ``num_correct / num_tokens`` (and
``sum_token_loss / num_tokens``) of the evaluated means are the token-level accuracy and loss
the papers report.

Padding must be on the right (as FedJAX and TFF pad): the LSTM is causal, so trailing pads never
change the outputs at real positions, and masking their targets makes the result identical to
the unpadded sequence's.

**Token ids.** Both sequence-to-sequence datasets use ``vocab_size + 4`` ids: the vocabulary plus
pad, beginning- and end-of-sequence and one out-of-vocabulary bucket. FedJAX and TFF place them
differently (``SpecialTokens.fedjax`` / ``SpecialTokens.tff``); pass the layout your converter
wrote. Accuracy variants (all excluding pad targets):

* ``accuracy``: every real target token (TFF's ``accuracy_with_oov``);
* ``accuracy_no_oov``: also excluding OOV targets (TFF);
* ``accuracy_no_oov_or_eos``: also excluding OOV and EOS targets (TFF's research baselines; BOS
  never is a target there);
* ``accuracy_in_vocab``: FedJAX's: EOS targets excluded, and the prediction is the arg-max over
  real vocabulary ids only (pad, BOS, EOS and OOV logits masked), so an OOV target always counts
  as a miss.
"""

from collections.abc import Sequence
from typing import NamedTuple

import flax.linen as nn
import jax.numpy as jnp
import numpy as np
import optax

from fedjaxscale.models.model import Model, from_linen


class SpecialTokens(NamedTuple):
  """Ids of the special tokens of a ``vocab_size + 4`` id space.

  Attributes:
    pad: padding (masked from loss and metrics).
    bos: beginning of a sequence.
    eos: end of a sequence.
    oov: the out-of-vocabulary bucket.
  """

  pad: int
  bos: int
  eos: int
  oov: int

  @classmethod
  def fedjax(cls, vocab_size: int) -> "SpecialTokens":
    """FedJAX's datasets: pad 0, BOS 1, EOS 2, words ``3..vocab_size+2``, OOV ``vocab_size+3``."""
    return cls(pad=0, bos=1, eos=2, oov=vocab_size + 3)

  @classmethod
  def tff(cls, vocab_size: int) -> "SpecialTokens":
    """TFF's research baselines: pad 0, words ``1..vocab_size``, OOV, BOS, EOS after them."""
    return cls(pad=0, oov=vocab_size + 1, bos=vocab_size + 2, eos=vocab_size + 3)


class RecurrentLM(nn.Module):
  """Embedding, stacked LSTMs, an optional dense projection, and logits at every position.

  ``x``: int ``[batch, time]``; returns float32 ``[batch, time, num_classes]``. Each LSTM layer is a
  flax ``nn.RNN`` (an ``nn.scan`` over time), so the network is jittable, ``vmap``-able over
  clients and runs inside the engine's ``lax.scan`` over local steps.
  """

  num_classes: int
  embed_dim: int
  lstm_sizes: Sequence[int]
  projection: int | None = None

  @nn.compact
  def __call__(self, x, train: bool = False):
    h = nn.Embed(self.num_classes, self.embed_dim, name="embed")(x.astype(jnp.int32))
    for i, width in enumerate(self.lstm_sizes):
      h = nn.RNN(nn.OptimizedLSTMCell(width, name=f"lstm_{i}"))(h)
    if self.projection:
      h = nn.Dense(self.projection, name="projection")(h)
    return nn.Dense(self.num_classes, name="logits")(h).astype(jnp.float32)


class NextTokenLSTM(nn.Module):
  """``RecurrentLM`` read at the last real input position: logits ``[batch, num_classes]``.

  With ``pad_id`` set, inputs may be right-padded: the logits come from the last position whose
  input is not ``pad_id`` (position 0 for an all-pad row), which equals running the unpadded
  sequence because the LSTM is causal.
  """

  num_classes: int
  embed_dim: int
  lstm_sizes: Sequence[int]
  pad_id: int | None = None

  @nn.compact
  def __call__(self, x, train: bool = False):
    logits = RecurrentLM(self.num_classes, self.embed_dim, self.lstm_sizes, name="lm")(x, train)
    if self.pad_id is None:
      return logits[:, -1]
    real = x != self.pad_id
    positions = jnp.arange(x.shape[1])
    last = jnp.max(jnp.where(real, positions, 0), axis=1)
    return jnp.take_along_axis(logits, last[:, None, None], axis=1)[:, 0]


def _target_mask(y, excluded: Sequence[int]):
  keep = jnp.ones(y.shape, jnp.bool_)
  for token in excluded:
    keep = keep & (y != token)
  return keep.astype(jnp.float32)


def sequence_cross_entropy(pad: int = 0, label_key: str = "y"):
  """Per-example mean cross-entropy over the target tokens that are not ``pad``: ``[batch]``."""

  def fn(batch, logits):
    y = batch[label_key]
    weights = _target_mask(y, (pad,))
    ce = optax.softmax_cross_entropy_with_integer_labels(logits.astype(jnp.float32), y)
    return (ce * weights).sum(-1) / jnp.maximum(weights.sum(-1), 1.0)

  return fn


def sequence_accuracy(excluded: Sequence[int], *, masked_logits: Sequence[int] = (), label_key: str = "y"):
  """Per-example fraction of correct target tokens, over targets not in ``excluded``: ``[batch]``.

  ``masked_logits``: ids the prediction may not take (their logits are set to -inf first).
  An example with no counted token scores 0.
  """
  excluded, masked_logits = tuple(excluded), tuple(masked_logits)

  def fn(batch, logits):
    y = batch[label_key]
    if masked_logits:
      logits = logits.at[..., jnp.asarray(masked_logits)].set(-jnp.inf)
    weights = _target_mask(y, excluded)
    correct = (jnp.argmax(logits, axis=-1) == y).astype(jnp.float32)
    return (correct * weights).sum(-1) / jnp.maximum(weights.sum(-1), 1.0)

  return fn


def sequence_metrics(tokens: SpecialTokens, label_key: str = "y") -> dict:
  """The sequence models' metrics (see the module docstring)."""
  pad, bos, eos, oov = tokens.pad, tokens.bos, tokens.eos, tokens.oov

  def num_tokens(batch, logits):
    return _target_mask(batch[label_key], (pad,)).sum(-1)

  def num_correct(batch, logits):
    y = batch[label_key]
    return ((jnp.argmax(logits, axis=-1) == y) * _target_mask(y, (pad,))).sum(-1)

  def sum_token_loss(batch, logits):
    y = batch[label_key]
    ce = optax.softmax_cross_entropy_with_integer_labels(logits.astype(jnp.float32), y)
    return (ce * _target_mask(y, (pad,))).sum(-1)

  return {
    "accuracy": sequence_accuracy((pad,), label_key=label_key),
    "accuracy_no_oov": sequence_accuracy((pad, oov), label_key=label_key),
    "accuracy_no_oov_or_eos": sequence_accuracy((pad, oov, eos), label_key=label_key),
    "accuracy_in_vocab": sequence_accuracy((pad, eos), masked_logits=(pad, bos, eos, oov), label_key=label_key),
    "num_tokens": num_tokens,
    "num_correct": num_correct,
    "sum_token_loss": sum_token_loss,
  }


def _check_tokens(tokens: SpecialTokens, num_classes: int):
  bad = {k: v for k, v in tokens._asdict().items() if not 0 <= v < num_classes}
  if bad:
    raise ValueError(f"special token ids {bad} are outside [0, {num_classes})")
  if len(set(tokens)) != 4:
    raise ValueError(f"special token ids must be distinct, got {tokens}")


def _sequence_model(vocab_size, embed_dim, lstm_sizes, projection, tokens, name) -> Model:
  num_classes = vocab_size + 4
  _check_tokens(tokens, num_classes)
  module = RecurrentLM(num_classes, embed_dim, tuple(lstm_sizes), projection)
  return from_linen(
    module,
    {"x": np.zeros((1, 1), np.int32)},
    num_classes=num_classes,
    per_example_loss=sequence_cross_entropy(tokens.pad),
    metrics=sequence_metrics(tokens),
    name=name,
  )


def shakespeare_lstm(
  vocab_size: int = 80, embed_dim: int = 8, lstm_sizes: Sequence[int] = (256, 256), *, pad_id: int | None = None
) -> Model:
  """LEAF's Shakespeare next-character LSTM (Caldas et al. 2018, arXiv:1812.01097).

  Embedding 8, two LSTM layers of 256, a dense layer over the 80 LEAF characters, applied to the
  last output: LEAF predicts the character that follows an 80-character window. 817,872
  parameters at the defaults.

  Args:
    vocab_size: characters (LEAF: 80, its ``ALL_LETTERS``); inputs and labels lie in
      ``[0, vocab_size)``.
    embed_dim: character embedding width.
    lstm_sizes: widths of the stacked LSTM layers.
    pad_id: LEAF windows are never padded (the default, None, reads the last position); give
      a pad id (inside ``[0, vocab_size)``) to accept right-padded windows, read at their last
      non-pad input.

  Returns:
    A ``Model``: ``x`` int32 ``[batch, T]``, ``y`` int32 ``[batch]``; loss softmax cross-entropy,
    metric ``accuracy``.

  Example::

    model = shakespeare_lstm()
    params = model.init(jax.random.key(0))
    logits = model.apply(params, {'x': np.zeros((4, 80), np.int32)}, None, False)  # [4, 80]
  """
  if pad_id is not None and not 0 <= pad_id < vocab_size:
    raise ValueError(f"pad_id {pad_id} is outside [0, {vocab_size})")
  module = NextTokenLSTM(vocab_size, embed_dim, tuple(lstm_sizes), pad_id)
  return from_linen(module, {"x": np.zeros((1, 1), np.int32)}, num_classes=vocab_size, name="shakespeare_lstm")


def shakespeare_seq_lstm(
  vocab_size: int = 86,
  embed_dim: int = 8,
  lstm_sizes: Sequence[int] = (256, 256),
  *,
  tokens: SpecialTokens | None = None,
) -> Model:
  """The Shakespeare character LSTM as FedJAX and TFF train it: next character at every position.

  Communication-Efficient Learning of Deep Networks from Decentralized Data. H. B. McMahan,
  E. Moore, D. Ramage, S. Hampson, B. Agüera y Arcas. AISTATS 2017, arXiv:1602.05629; as used by
  Reddi et al., Adaptive Federated Optimization, ICLR 2021, arXiv:2003.00295. Embedding 8, two
  LSTM layers of 256, logits over ``vocab_size + 4`` ids at every position. 820,522 parameters
  at the defaults. (FedJAX's Haiku model also applies a ``tanh`` to each LSTM output; this one,
  like TFF's Keras model, does not.)

  Args:
    vocab_size: characters excluding the 4 special ids (FedJAX/TFF: 86).
    embed_dim: character embedding width.
    lstm_sizes: widths of the stacked LSTM layers.
    tokens: special ids; default ``SpecialTokens.fedjax(vocab_size)`` (pad 0).

  Returns:
    A ``Model``: ``x``, ``y`` int32 ``[batch, T]`` right-padded; per-example loss the mean
    cross-entropy over non-pad targets; metrics as the module docstring lists.

  Example::

    model = shakespeare_seq_lstm()
    logits = model.apply(model.init(jax.random.key(0)), {'x': x}, None, False)  # [batch, T, 90]
  """
  tokens = tokens if tokens is not None else SpecialTokens.fedjax(vocab_size)
  return _sequence_model(vocab_size, embed_dim, lstm_sizes, None, tokens, "shakespeare_seq_lstm")


def stackoverflow_lstm(
  vocab_size: int = 10000,
  embed_dim: int = 96,
  lstm_sizes: Sequence[int] = (670,),
  projection: int = 96,
  *,
  tokens: SpecialTokens | None = None,
) -> Model:
  """The StackOverflow next-word LSTM of Reddi et al.

  Adaptive Federated Optimization. S. J. Reddi, Z. Charles, M. Zaheer, Z. Garrett, K. Rush,
  J. Konečný, S. Kumar, H. B. McMahan. ICLR 2021, arXiv:2003.00295. Embedding 96 over the
  10,000 most frequent words plus pad, BOS, EOS and one OOV bucket; one LSTM of 670; a dense
  projection to 96; logits over the 10,004 ids at every position. 4,050,748 parameters at the
  defaults (the paper's count).

  Args:
    vocab_size: words excluding the 4 special ids.
    embed_dim: word embedding width.
    lstm_sizes: widths of the stacked LSTM layers.
    projection: width of the dense layer between the LSTM and the logits (0 or None: none).
    tokens: special ids; default ``SpecialTokens.fedjax(vocab_size)`` (pad 0).

  Returns:
    A ``Model``: ``x``, ``y`` int32 ``[batch, 20]`` (any length) right-padded; per-example loss the
    mean cross-entropy over non-pad targets; metrics as the module docstring lists.

  Example::

    model = stackoverflow_lstm()
    state = algorithms.fedyogi(model, optax.sgd(10 ** -0.5)).init(model.init(jax.random.key(0)))
  """
  tokens = tokens if tokens is not None else SpecialTokens.fedjax(vocab_size)
  return _sequence_model(vocab_size, embed_dim, lstm_sizes, projection, tokens, "stackoverflow_lstm")
