"""The sequence and vision models: sizes, shapes, padding masks, and FedAvg smoke training.

Every model is built small here (widths of a few units, 16x16 images, vocabularies of six words),
so the file runs in seconds on CPU; the defaults keep the papers' sizes, checked by parameter
count without materialising them.
"""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from fedjaxscale import algorithms, models
from fedjaxscale.data import make_cohort
from fedjaxscale.engine import Engine
from fedjaxscale.models import SpecialTokens

WORDS = 6  # tiny vocabulary of the sequence fixtures
TOKENS = SpecialTokens.fedjax(WORDS)  # pad 0, BOS 1, EOS 2, words 3..8, OOV 9
T = 10


def key(seed=0):
  # rbg keys: initialising a ResNet-18 with threefry keys takes XLA ~10 s of CPU to compile.
  return jax.random.key(seed, impl="rbg")


def init(model, seed=0):
  return jax.jit(model.init)(key(seed))


def predict(model, params, batch):
  return jax.jit(lambda p, b: model.apply(p, b, None, False))(params, batch)


def shapes(model, batch):
  """Shapes of (logits, per-example evaluation) without compiling anything."""
  params = jax.eval_shape(model.init, key())
  logits = jax.eval_shape(lambda p, b: model.apply(p, b, None, False), params, batch)
  mask = np.ones(len(next(iter(batch.values()))), bool)
  per_example = jax.eval_shape(model.evaluate_per_example, params, batch, mask) if "y" in batch else None
  return logits, per_example


def num_params(model):
  shapes = jax.eval_shape(model.init, key())
  return sum(int(np.prod(x.shape)) for x in jax.tree.leaves(shapes))


@pytest.mark.parametrize(
  "factory, expected",
  [
    (lambda: models.shakespeare_lstm(), 817_872),  # 80 chars, embed 8, LSTM 256 x 2
    (lambda: models.shakespeare_seq_lstm(), 820_522),  # 86 + 4 ids
    (lambda: models.stackoverflow_lstm(), 4_050_748),  # as Reddi et al. (ICLR 2021) report
    (lambda: models.resnet18_gn(1000, image_shape=(224, 224, 3)), 11_689_512),  # = torchvision resnet18
    (lambda: models.resnet18_gn(100), 11_220_132),  # CIFAR-100, 3x3 stem
    (lambda: models.speech_cnn(), 245_123),
  ],
  ids=["shakespeare_leaf", "shakespeare_seq", "stackoverflow", "resnet18_imagenet", "resnet18_cifar", "speech"],
)
def test_parameter_counts_at_paper_sizes(factory, expected):
  assert num_params(factory()) == expected


# ---------------------------------------------------------------------------------------------
# Tiny models and learnable fixture data (4 clients).


def tiny_seq(name):
  if name == "shakespeare_seq":
    return models.shakespeare_seq_lstm(WORDS, embed_dim=8, lstm_sizes=(16, 16))
  return models.stackoverflow_lstm(WORDS, embed_dim=8, lstm_sizes=(16,), projection=8)


def next_word(w):
  return 3 + (w - 3 + 1) % WORDS


def seq_examples(n, rng, length=T, real_lengths=None):
  """Right-padded sequences ``BOS w0 w1 ...`` where each word is the previous one plus one."""
  x = np.zeros((n, length), np.int32)
  y = np.zeros((n, length), np.int32)
  for i in range(n):
    real = int(rng.integers(3, length + 1)) if real_lengths is None else real_lengths[i]
    words = [int(rng.integers(3, 3 + WORDS))]
    while len(words) < real - 1:
      words.append(next_word(words[-1]))
    seq = [TOKENS.bos] + words + [TOKENS.eos]
    x[i, :real] = seq[:-1]
    y[i, :real] = seq[1:]
  return {"x": x, "y": y}


def leaf_examples(n, rng, vocab=10, length=8):
  start = rng.integers(0, vocab, n)
  x = (start[:, None] + np.arange(length)) % vocab
  return {"x": x.astype(np.int32), "y": ((start + length) % vocab).astype(np.int32)}


def image_examples(n, rng, classes=3, side=16):
  y = rng.integers(0, classes, n).astype(np.int32)
  x = rng.integers(0, 60, (n, side, side)).astype(np.uint8)
  for i, c in enumerate(y):  # class c lights up the c-th horizontal band
    x[i, c * side // classes : (c + 1) * side // classes] += 180
  return {"x": x, "y": y}


def speech_examples(n, rng, classes=3, frames=16, mels=8):
  y = rng.integers(0, classes, n).astype(np.int32)
  x = rng.normal(size=(n, frames, mels)).astype(np.float32) - 5.0
  for i, c in enumerate(y):  # class c is energy in mel bands [2c, 2c + 2)
    x[i, :, 2 * c : 2 * c + 2] += 3.0
  return {"x": x, "y": y}


TINY = {
  "shakespeare_leaf": (lambda: models.shakespeare_lstm(10, embed_dim=8, lstm_sizes=(16, 16)), leaf_examples),
  "shakespeare_seq": (lambda: tiny_seq("shakespeare_seq"), seq_examples),
  "stackoverflow": (lambda: tiny_seq("stackoverflow"), seq_examples),
  "resnet18_gn": (lambda: models.resnet18_gn(3, width=4, groups=2, image_shape=(16, 16)), image_examples),
  "speech_cnn": (lambda: models.speech_cnn(3, channels=(4, 8), groups=2, num_mels=8), speech_examples),
}


def fixture_clients(make_examples, num_clients=4, per_client=8, seed=0):
  rng = np.random.default_rng(seed)
  return [make_examples(per_client, rng) for _ in range(num_clients)]


@pytest.mark.parametrize("name", sorted(TINY))
def test_shapes(name):
  factory, make_examples = TINY[name]
  model = factory()
  batch = make_examples(5, np.random.default_rng(1))
  logits, per_example = shapes(model, batch)
  expected = (5, batch["x"].shape[1], model.num_classes) if batch["y"].ndim == 2 else (5, model.num_classes)
  assert logits.shape == expected and logits.dtype == jnp.float32
  assert set(per_example) == {"count", "loss", *model.metrics}
  for k, v in per_example.items():
    assert v.shape == (5,), k


def test_resnet_accepts_any_image_size_grayscale_or_channels_last():
  gray = models.resnet18_gn(7, width=4, groups=2, image_shape=(16, 16))
  for shape in [(2, 16, 16), (2, 16, 16, 1), (2, 20, 12), (2, 64, 64)]:
    assert shapes(gray, {"x": np.zeros(shape, np.uint8)})[0].shape == (2, 7), shape
  rgb = models.resnet18_gn(7, width=4, groups=2, image_shape=(224, 224, 3))  # 'auto' -> ImageNet stem
  assert jax.eval_shape(rgb.init, key())["stem"]["kernel"].shape == (7, 7, 3, 4)
  assert shapes(rgb, {"x": np.zeros((2, 40, 40, 3), np.uint8)})[0].shape == (2, 7)
  with pytest.raises(ValueError, match="groups"):
    models.resnet18_gn(7, width=6, groups=4)
  with pytest.raises(ValueError, match="stem"):
    models.resnet18_gn(7, stem="tiny")


def test_speech_cnn_accepts_any_number_of_frames():
  model = models.speech_cnn(35, channels=(4, 8), groups=2)
  for frames in (1, 7, 101):
    assert shapes(model, {"x": np.zeros((3, frames, 40), np.float32)})[0].shape == (3, 35)


# ---------------------------------------------------------------------------------------------
# Padding never changes a loss or a metric.


def _reference_sequence_numbers(logits, y):
  """NumPy per-example loss and accuracies of one *unpadded* sequence (float64)."""
  logits = np.asarray(logits, np.float64)
  logp = logits - logits.max(-1, keepdims=True)
  logp = logp - np.log(np.exp(logp).sum(-1, keepdims=True))
  ce = -logp[np.arange(len(y)), y]
  correct = logits.argmax(-1) == y
  in_vocab = logits.copy()
  in_vocab[:, list(TOKENS)] = -np.inf
  keep_no_oov = y != TOKENS.oov
  keep_no_eos = y != TOKENS.eos

  def mean(v, keep):
    return v[keep].mean() if keep.any() else 0.0

  return {
    "loss": ce.mean(),
    "accuracy": correct.mean(),
    "accuracy_no_oov": mean(correct, keep_no_oov),
    "accuracy_no_oov_or_eos": mean(correct, keep_no_oov & keep_no_eos),
    "accuracy_in_vocab": mean(in_vocab.argmax(-1) == y, keep_no_eos),
    "num_tokens": len(y),
    "num_correct": correct.sum(),
    "sum_token_loss": ce.sum(),
  }


@pytest.mark.parametrize("name", ["shakespeare_seq", "stackoverflow"])
def test_sequence_padding_matches_unpadded_sequence(name):
  model = tiny_seq(name)
  params = init(model, 3)
  lengths = [T, 4, 4, 7]  # a full row and three padded ones
  batch = seq_examples(4, np.random.default_rng(4), real_lengths=lengths)
  batch["y"][0, 1] = TOKENS.oov  # exercise every accuracy variant
  padded = jax.jit(model.evaluate_per_example)(params, batch, np.ones(4, bool))
  for i, n in enumerate(lengths):
    x, y = batch["x"][i : i + 1, :n], batch["y"][i, :n]
    want = _reference_sequence_numbers(predict(model, params, {"x": x})[0], y)
    for k, v in want.items():
      np.testing.assert_allclose(padded[k][i], v, rtol=1e-5, atol=1e-6, err_msg=f"example {i}, {k}")


def test_sequence_training_loss_of_an_all_pad_example_is_zero_and_its_gradient_finite():
  model = tiny_seq("stackoverflow")
  params = init(model)
  loss_and_grad = jax.jit(jax.value_and_grad(model.loss, has_aux=True))
  batch = seq_examples(5, np.random.default_rng(0), length=6)
  batch["x"][-1] = batch["y"][-1] = TOKENS.pad  # an example with no real token
  for keep_last in (True, False):  # whether or not the example mask leaves it out
    mask = np.array([True] * 4 + [keep_last])
    (loss, per_example), grads = loss_and_grad(params, batch, mask)
    assert per_example[-1] == 0.0
    np.testing.assert_allclose(loss, per_example[:4].sum() / mask.sum(), rtol=1e-6)
    assert all(np.all(np.isfinite(g)) for g in jax.tree.leaves(grads))


def test_sequence_accuracy_variants_by_hand():
  # Targets: word, OOV, EOS, word, pad. Predictions (arg-max): right, right, right, wrong, -.
  y = np.array([[3, TOKENS.oov, TOKENS.eos, 4, TOKENS.pad]], np.int32)
  logits = np.zeros((1, 5, WORDS + 4), np.float32)
  for t, (best, second) in enumerate([(3, 5), (TOKENS.oov, 7), (TOKENS.eos, 3), (5, 4), (1, 2)]):
    logits[0, t, best], logits[0, t, second] = 2.0, 1.0
  model = tiny_seq("stackoverflow")
  got = {k: float(fn({"y": y}, jnp.asarray(logits))[0]) for k, fn in model.metrics.items()}
  assert got["num_tokens"] == 4 and got["num_correct"] == 3
  assert got["accuracy"] == pytest.approx(3 / 4)  # pad excluded
  assert got["accuracy_no_oov"] == pytest.approx(2 / 3)  # and the OOV target
  assert got["accuracy_no_oov_or_eos"] == pytest.approx(1 / 2)  # and the EOS target
  # FedJAX's in-vocabulary accuracy: EOS targets excluded, special ids never predicted, so the
  # OOV target (predicted 7 once OOV is masked) is a miss: 1 of {word, OOV, word}.
  assert got["accuracy_in_vocab"] == pytest.approx(1 / 3)


def test_special_token_layouts():
  assert SpecialTokens.fedjax(10000) == SpecialTokens(pad=0, bos=1, eos=2, oov=10003)
  assert SpecialTokens.tff(10000) == SpecialTokens(pad=0, bos=10002, eos=10003, oov=10001)
  with pytest.raises(ValueError, match="outside"):
    models.stackoverflow_lstm(10, tokens=SpecialTokens(0, 1, 2, 14))


def test_leaf_lstm_reads_the_last_real_character_of_right_padded_windows():
  pad = 9
  model = models.shakespeare_lstm(10, embed_dim=4, lstm_sizes=(8,), pad_id=pad)
  params = init(model)
  x = np.random.default_rng(0).integers(0, 9, (3, 8)).astype(np.int32)
  lengths = [8, 4, 1]
  padded = x.copy()
  for i, n in enumerate(lengths):
    padded[i, n:] = pad
  got = predict(model, params, {"x": padded})
  for i, n in enumerate(lengths):
    want = predict(model, params, {"x": x[i : i + 1, :n]})[0]
    np.testing.assert_allclose(got[i], want, rtol=1e-5, atol=1e-6)
  unpadded = models.shakespeare_lstm(10, embed_dim=4, lstm_sizes=(8,))  # LEAF: no pad, last position
  np.testing.assert_allclose(predict(unpadded, params, {"x": x[:1]}), got[:1], rtol=1e-5, atol=1e-6)


# ---------------------------------------------------------------------------------------------
# Each model trains: a few FedAvg rounds through the engine's vmap backend (the ResNet: loop).

ROUNDS = 5
# Plain SGD: an optimizer with state (Adam) makes the engine's compiled round markedly slower to build.
CLIENT_LR = {
  "shakespeare_leaf": 2.0,
  "shakespeare_seq": 4.0,
  "stackoverflow": 1.0,
  "resnet18_gn": 0.1,
  "speech_cnn": 0.5,
}


@pytest.mark.parametrize("name", sorted(TINY))
def test_fedavg_smoke_training_lowers_the_loss(name):
  """Four clients of eight examples; the round-1 and last-round training losses are on the same data."""
  factory, make_examples = TINY[name]
  model = factory()
  # scan_unroll=1: on CPU the engine unrolls short local-step scans by default, which multiplies
  # a ResNet's compile time by the step count; one rolled body keeps this test quick. The ResNet
  # trains on the loop backend (a third of the vmapped round's compile, 12 s against 40 s alone):
  # test_strategies checks that every strategy of it equals that backend.
  engine = Engine("loop") if name == "resnet18_gn" else Engine("vmap", scan_unroll=1)
  alg = algorithms.fedavg(model, optax.sgd(CLIENT_LR[name]), engine=engine)
  cohort = make_cohort(fixture_clients(make_examples), batch_size=4, local_steps=8, shuffle=True, seed=0)
  state = alg.init(init(model))
  train_losses = []
  for r in range(ROUNDS):
    state, diagnostics = alg.apply(state, cohort, jax.random.key(r))
    assert diagnostics["num_nonfinite"] == 0
    train_losses.append(diagnostics["train_loss"])
  assert train_losses[-1] < 0.8 * train_losses[0], train_losses
