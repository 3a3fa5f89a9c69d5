"""Per-dataset preprocessing of the FedJAX/TFF SQLite sources into ready-to-train features.

Every function here takes one client's raw columns, as FedJAX's SQLite blobs hold them
(``{feature: [n, ...] array}``; TFF protos are stacked into the same columns first), and returns
the stored features. Shapes and vocabularies follow FedJAX's ``fedjax/datasets/*.py``:

- emnist: source ``pixels`` float32 [28, 28] in [0, 1] with 1.0 the white background (TFF and
  FedJAX store EMNIST so; FedJAX's model input is ``1 - pixels``, TFF's and Reddi et al.'s is
  ``pixels``), ``label`` int in [0, 62) (digits-only files: [0, 10)).
- cifar100: ``image`` [32, 32, 3] ints in [0, 255], ``label`` in [0, 100), ``coarse_label`` in
  [0, 20).
- shakespeare: ``snippets`` bytes; FedJAX's character table (PAD 0, BOS 1, EOS 2, 86 symbols,
  OOV 89).
- stackoverflow: ``tokens`` bytes of space-separated words; FedJAX's tokenizer (PAD 0, BOS 1,
  EOS 2, word ``i`` of the vocabulary -> ``i + 3``, one OOV bucket ``vocab_size + 3``).
"""

from __future__ import annotations

import collections
import string
from collections.abc import Iterable, Mapping, Sequence

import numpy as np

from data_pipelines.errors import ConversionError

PAD, BOS, EOS = 0, 1, 2
SPECIAL_TOKENS = ("<pad>", "<bos>", "<eos>")
OOV_TOKEN = "<oov>"

EMNIST_LABELS = tuple(string.digits + string.ascii_uppercase + string.ascii_lowercase)
CIFAR100_LABELS = tuple(
  """
apple aquarium_fish baby bear beaver bed bee beetle bicycle bottle bowl boy bridge bus butterfly
camel can castle caterpillar cattle chair chimpanzee clock cloud cockroach couch crab crocodile cup
dinosaur dolphin elephant flatfish forest fox girl hamster house kangaroo keyboard lamp lawn_mower
leopard lion lizard lobster man maple_tree motorcycle mountain mouse mushroom oak_tree orange orchid
otter palm_tree pear pickup_truck pine_tree plain plate poppy porcupine possum rabbit raccoon ray
road rocket rose sea seal shark shrew skunk skyscraper snail snake spider squirrel streetcar
sunflower sweet_pepper table tank telephone television tiger tractor train trout tulip turtle
wardrobe whale willow_tree wolf woman worm""".split()
)
CIFAR100_COARSE_LABELS = tuple(
  """
aquatic_mammals fish flowers food_containers fruit_and_vegetables household_electrical_devices
household_furniture insects large_carnivores large_man-made_outdoor_things
large_natural_outdoor_scenes large_omnivores_and_herbivores medium_mammals
non-insect_invertebrates people reptiles small_mammals trees vehicles_1 vehicles_2""".split()
)
assert len(CIFAR100_LABELS) == 100 and len(CIFAR100_COARSE_LABELS) == 20

# FedJAX's Shakespeare symbols (the TFF text-generation tutorial's), id = 3 + position.
SHAKESPEARE_SYMBOLS = b"dhlptx@DHLPTX $(,048cgkoswCGKOSW[_#'/37;?bfjnrvzBFJNRVZ\"&*.26:\naeimquyAEIMQUY]!%)-159\r"
SHAKESPEARE_OOV = 3 + len(SHAKESPEARE_SYMBOLS)
SHAKESPEARE_VOCAB = SPECIAL_TOKENS + tuple(chr(c) for c in SHAKESPEARE_SYMBOLS) + (OOV_TOKEN,)
_SHAKESPEARE_TABLE = np.full(256, SHAKESPEARE_OOV, np.int32)
_SHAKESPEARE_TABLE[np.frombuffer(SHAKESPEARE_SYMBOLS, np.uint8)] = np.arange(
  3, 3 + len(SHAKESPEARE_SYMBOLS), dtype=np.int32
)

DEFAULT_SEQ_LEN = {"shakespeare": 80, "stackoverflow": 20}

# The source features each dataset needs: name -> (TFF Example kind, per-example shape).
SOURCE_FEATURES = {
  "emnist": {"pixels": ("float", (28, 28)), "label": ("int64", ())},
  "cifar100": {"image": ("int64", (32, 32, 3)), "label": ("int64", ()), "coarse_label": ("int64", ())},
  "shakespeare": {"snippets": ("bytes", ())},
  "stackoverflow": {"tokens": ("bytes", ())},
}


def check_columns(dataset: str, cols: Mapping[str, np.ndarray], where: str) -> int:
  """Checks a client's raw columns against `SOURCE_FEATURES`; returns its example count."""
  expected = SOURCE_FEATURES[dataset]
  missing = sorted(set(expected) - set(cols))
  if missing:
    raise ConversionError(
      f"{where}: has features {sorted(cols)}, but {dataset} needs {sorted(expected)} (missing {missing})"
    )
  n = None
  for name, (kind, shape) in expected.items():
    arr = cols[name]
    if kind == "bytes":
      ok = arr.dtype == object or arr.dtype.kind == "S"
    else:
      ok = arr.dtype.kind in ("f" if kind == "float" else "iu")
    if not ok or tuple(arr.shape[1:]) != shape:
      raise ConversionError(
        f"{where}: feature {name!r} is {arr.dtype} of shape "
        f"{list(arr.shape)}; {dataset} needs {kind} of shape "
        f"{['n', *shape]}"
      )
    if n is not None and arr.shape[0] != n:
      raise ConversionError(f"{where}: feature {name!r} has {arr.shape[0]} rows, another has {n}")
    n = arr.shape[0]
  return n


def _check_range(arr: np.ndarray, hi: int, name: str, where: str) -> None:
  bad = (arr < 0) | (arr >= hi)
  if np.any(bad):
    i = int(np.flatnonzero(bad)[0])
    raise ConversionError(f"{where}: {name} {arr[i]} of example {i} is outside the {hi} classes [0, {hi})")


def emnist(cols, where: str, *, only_digits: bool = False, invert: bool = False):
  """x uint8 [28, 28] = round(255 * pixels) (or of 1 - pixels when ``invert``); y int32."""
  pixels = np.asarray(cols["pixels"], np.float32)
  bad = ~((pixels >= -1e-3) & (pixels <= 1 + 1e-3))  # NaN fails too
  if np.any(bad):
    i = int(np.flatnonzero(bad.reshape(len(pixels), -1).any(axis=1))[0])
    raise ConversionError(f"{where}: pixels of example {i} are outside [0, 1] (e.g. {pixels[i][bad[i]][0]})")
  if invert:
    pixels = 1.0 - pixels
  x = np.clip(np.rint(pixels * 255.0), 0, 255).astype(np.uint8)
  y = np.asarray(cols["label"]).astype(np.int64)
  _check_range(y, 10 if only_digits else 62, "label", where)
  return {"x": x, "y": y.astype(np.int32)}


def cifar100(cols, where: str):
  """x uint8 [32, 32, 3]; y int32 fine label; coarse_label int32."""
  image = np.asarray(cols["image"])
  if image.dtype != np.uint8:
    bad = (image < 0) | (image > 255)
    if np.any(bad):
      i = int(np.flatnonzero(bad.reshape(len(image), -1).any(axis=1))[0])
      raise ConversionError(f"{where}: image of example {i} has values outside [0, 255]")
  y = np.asarray(cols["label"]).astype(np.int64)
  coarse = np.asarray(cols["coarse_label"]).astype(np.int64)
  _check_range(y, 100, "label", where)
  _check_range(coarse, 20, "coarse_label", where)
  return {"x": image.astype(np.uint8), "y": y.astype(np.int32), "coarse_label": coarse.astype(np.int32)}


def _as_bytes_list(arr: np.ndarray, name: str, where: str) -> list[bytes]:
  out = []
  for i, v in enumerate(arr.tolist()):
    if isinstance(v, str):
      v = v.encode("utf-8")
    if not isinstance(v, bytes):
      raise ConversionError(f"{where}: {name} of example {i} is a {type(v).__name__}, not bytes")
    out.append(v)
  return out


def shakespeare(cols, where: str, *, seq_len: int):
  """FedJAX's ``shakespeare.preprocess_client``, vectorised.

  The client's snippets are joined into one id sequence, each wrapped in BOS ... EOS, and cut
  into rows of ``seq_len``: x is the sequence, y the sequence shifted by one, both padded with
  PAD. So ``[b'ABCD', b'E']`` with seq_len 3 gives x ``[[BOS A B] [C D EOS] [BOS E PAD]]`` and
  y ``[[A B C] [D EOS BOS] [E EOS PAD]]``.
  """
  snippets = _as_bytes_list(cols["snippets"], "snippets", where)
  lengths = np.fromiter((len(s) for s in snippets), np.int64, len(snippets))
  total = int(lengths.sum() + 2 * len(snippets))
  starts = np.concatenate([[0], np.cumsum(lengths + 2)[:-1]])
  joined = np.empty(total, np.int32)
  is_char = np.ones(total, bool)
  is_char[starts] = False
  is_char[starts + lengths + 1] = False
  joined[starts] = BOS
  joined[starts + lengths + 1] = EOS
  joined[is_char] = _SHAKESPEARE_TABLE[np.frombuffer(b"".join(snippets), np.uint8)]
  rows = -(-(total - 1) // seq_len)
  x = np.full(rows * seq_len, PAD, np.int32)
  y = np.full(rows * seq_len, PAD, np.int32)
  x[: total - 1] = joined[:-1]
  y[: total - 1] = joined[1:]
  return {"x": x.reshape(rows, seq_len), "y": y.reshape(rows, seq_len)}


# --------------------------------------------------------------------------------------------
# StackOverflow.


def client_words(cols, where: str) -> list[bytes]:
  """All words of a client's examples, split on single spaces as TF's ``strings.split``."""
  return b" ".join(_as_bytes_list(cols["tokens"], "tokens", where)).split(b" ")


def build_vocab(word_sets: Iterable[set[bytes]], vocab_size: int) -> list[str]:
  """The ``vocab_size`` words found in the most clients (ties by word).

  Counting clients, not occurrences, is how TFF's ``stackoverflow.word_count`` was made
  ("counts of unique users who have at least one example ... containing that token").
  """
  counts = collections.Counter()
  for words in word_sets:
    counts.update(words)
  counts.pop(b"", None)  # runs of spaces; a word-count file cannot hold the empty word
  ranked = sorted(counts.items(), key=lambda kv: (-kv[1], kv[0]))
  return [w.decode("utf-8", "replace") for w, _ in ranked[:vocab_size]]


def read_vocab_file(path: str, vocab_size: int) -> list[str]:
  """Reads the first ``vocab_size`` words of a word-count file (``word count`` per line,
  most frequent first, as TFF's ``stackoverflow.word_count``) or a plain one-word-per-line list.
  """
  vocab, seen = [], set()
  try:
    with open(path, encoding="utf-8") as f:
      for lineno, line in enumerate(f, 1):
        if len(vocab) == vocab_size:
          break
        parts = line.split()
        if not parts:
          continue
        if len(parts) > 2 or (len(parts) == 2 and not parts[1].lstrip("-").isdigit()):
          raise ConversionError(f'{path}: line {lineno} is not "word" or "word count": {line.rstrip()!r}')
        if parts[0] in seen:
          raise ConversionError(f"{path}: line {lineno} repeats the word {parts[0]!r}")
        seen.add(parts[0])
        vocab.append(parts[0])
  except FileNotFoundError:
    raise ConversionError(f"{path}: vocabulary file not found") from None
  except UnicodeDecodeError as e:
    raise ConversionError(f"{path}: not UTF-8 text ({e})") from None
  if not vocab:
    raise ConversionError(f"{path}: vocabulary file holds no words")
  return vocab


def vocab_table(vocab: Sequence[str]) -> dict[bytes, int]:
  return {w.encode("utf-8"): i + 3 for i, w in enumerate(vocab)}


def stackoverflow_label_names(vocab: Sequence[str]) -> list[str]:
  return [*SPECIAL_TOKENS, *vocab, OOV_TOKEN]


def stackoverflow(cols, where: str, *, table: Mapping[bytes, int], seq_len: int):
  """FedJAX's ``StackoverflowTokenizer`` (one OOV bucket), vectorised per client.

  Each example's ids are ``[BOS, w1 .. wn, EOS]``; x is all but the last, y all but the first,
  each truncated or PAD-padded to ``seq_len`` (so an example longer than ``seq_len`` words
  loses its tail and its EOS, as in FedJAX and TFF).
  """
  tokens = _as_bytes_list(cols["tokens"], "tokens", where)
  n = len(tokens)
  counts = np.fromiter((t.count(b" ") + 1 for t in tokens), np.int64, n)
  oov = len(table) + 3
  get = table.get
  words = b" ".join(tokens).split(b" ")
  ids = np.fromiter((get(w, oov) for w in words), np.int32, len(words))
  example = np.repeat(np.arange(n), counts)
  pos = np.arange(len(words)) - np.repeat(np.cumsum(counts) - counts, counts)
  x = np.zeros((n, seq_len), np.int32)
  y = np.zeros((n, seq_len), np.int32)
  x[:, 0] = BOS
  in_x = pos + 1 < seq_len
  x[example[in_x], pos[in_x] + 1] = ids[in_x]
  in_y = pos < seq_len
  y[example[in_y], pos[in_y]] = ids[in_y]
  short = np.flatnonzero(counts < seq_len)
  y[short, counts[short]] = EOS
  return {"x": x, "y": y}
