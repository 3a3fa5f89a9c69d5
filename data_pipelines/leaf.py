"""LEAF JSON (FEMNIST, Shakespeare, Sent140, synthetic) -> the fedjaxscale dataset layout.

LEAF: "LEAF: A Benchmark for Federated Settings", Caldas et al., 2018 (arXiv:1812.01097),
https://github.com/TalwalkarLab/leaf. Its preprocessing (``data/<dataset>/preprocess.sh``)
writes ``data/<dataset>/data/{train,test}/*.json``, several files per split, each::

    {"users": [...], "num_samples": [...], "user_data": {user: {"x": [...], "y": [...]}}}

(plus an optional "hierarchies" list, ignored). A user appears in at most one file per split.
Train and test are kept exactly as LEAF split them. Clients are ordered by file name, then by
their position in the file's ``users`` list.

What is stored, per dataset (features ``x`` and ``y``):

- femnist: x uint8 [28, 28] = round(pixel * 255) of LEAF's [0, 1] floats, stored as given
  (LEAF's background is 1.0, so 255; ink is dark); y int32 in 0..61, label names
  ``0-9A-Za-z``.
- shakespeare: x int32 [80] indices into LEAF's 80-symbol ``ALL_LETTERS``
  (``models/utils/language_utils.py``: index = ``ALL_LETTERS.find(c)``); y int32 index of the
  next character; label names are the 80 symbols. A symbol outside the vocabulary is an error
  (LEAF would silently map it to -1).
- sent140: x int32 [max_len] word ids of the tweet text (record field 4 of LEAF's
  ``[id, date, query, user, text]``). Text is lowercased and split with LEAF's ``split_line``
  pattern (words ``[\\w']+`` and the marks ``. , ! ? ;``); the vocabulary is the ``vocab_size``
  most frequent tokens of the TRAINING split (ties by token), ids 2.. by rank, with 0 = padding
  and 1 = out-of-vocabulary; the first ``max_len`` tokens are kept. The vocabulary is written to
  ``<output_dir>/vocab.txt`` (line i holds the token of id i; lines 0 and 1 are ``<pad>`` and
  ``<oov>``). y int32 0/1 (negative/positive).
- synthetic: x float32 [d] (LEAF's default d = 60), y int32 >= 0.

Command (one split directory per LEAF split is written under ``--output_dir``)::

    python -m data_pipelines.leaf --dataset=femnist \\
        --input_dir=leaf/data/femnist/data --output_dir=datasets/femnist
"""

from __future__ import annotations

import json
import multiprocessing
import os
import re
import warnings
from collections.abc import Sequence
from typing import Any

import numpy as np
from absl import app, flags

from data_pipelines import _splits_io
from data_pipelines.errors import ConversionError, ConversionWarning
from fedjaxscale.data.dataset import FederatedDataset, write_dataset

__all__ = [
  "ALL_LETTERS",
  "DATASETS",
  "FEMNIST_LABELS",
  "OOV_ID",
  "PAD_ID",
  "convert_leaf",
  "leaf_files",
  "read_leaf_file",
  "shakespeare_indices",
  "tokenize",
]

DATASETS = ("femnist", "shakespeare", "sent140", "synthetic")
# LEAF models/utils/language_utils.py, verbatim: index i of a symbol is its class / token id.
ALL_LETTERS = "\n !\"&'(),-.0123456789:;>?ABCDEFGHIJKLMNOPQRSTUVWXYZ[]abcdefghijklmnopqrstuvwxyz}"
FEMNIST_LABELS = tuple("0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz")
SENT140_LABELS = ("negative", "positive")
FEMNIST_SHAPE = (28, 28)
PAD_ID, OOV_ID = 0, 1
VOCAB_FILE = "vocab.txt"
# LEAF's split_line: words (letters, digits, _ and ') and five punctuation marks as tokens.
_TOKEN = re.compile(r"[\w']+|[.,!?;]")

# ASCII code point -> index in ALL_LETTERS (-1 when absent); code points >= 128 are absent.
_LETTER_LUT = np.full(128, -1, np.int32)
_LETTER_LUT[np.frombuffer(ALL_LETTERS.encode("ascii"), np.uint8)] = np.arange(len(ALL_LETTERS), dtype=np.int32)


# --------------------------------------------------------------------------------------------
# Reading LEAF JSON.


def read_leaf_file(file: str) -> dict[str, Any]:
  """Loads and validates one LEAF JSON file.

  Returns:
    The parsed object; ``users`` is a list of unique str, every one of them has a
    ``user_data`` entry with equal-length, non-empty ``x`` and ``y`` lists. Where
    ``num_samples`` disagrees with them (current LEAF's Shakespeare test split), a
    `ConversionWarning` says so and ``user_data`` counts, as in LEAF's models.

  Raises:
    ConversionError: naming the file (and the user) for truncated or malformed JSON.
  """
  try:
    with open(file, encoding="utf-8") as f:
      obj = json.load(f)
  except json.JSONDecodeError as e:
    # e carries the position: "Expecting ',' delimiter: line 1 column 80 (char 79)".
    raise ConversionError(f"{file}: not valid JSON (truncated or corrupt?): {e}") from None
  except UnicodeDecodeError as e:
    raise ConversionError(f"{file}: not UTF-8 text ({e})") from None
  except OSError as e:
    raise ConversionError(f"{file}: unreadable ({e})") from None
  if not isinstance(obj, dict):
    raise ConversionError(f'{file}: expected a JSON object with "users" and "user_data", got {type(obj).__name__}')
  for key in ("users", "user_data"):
    if key not in obj:
      raise ConversionError(f'{file}: missing key "{key}" (not a LEAF data file?)')
  users, user_data = obj["users"], obj["user_data"]
  if not isinstance(users, list) or not isinstance(user_data, dict):
    raise ConversionError(f'{file}: "users" must be a list and "user_data" an object')
  num_samples = obj.get("num_samples")
  if num_samples is not None and (not isinstance(num_samples, list) or len(num_samples) != len(users)):
    raise ConversionError(f'{file}: "num_samples" must be a list as long as "users" ({len(users)})')
  seen = set()
  disagree = []
  for i, user in enumerate(users):
    if not isinstance(user, str) or not user:
      raise ConversionError(f"{file}: users[{i}] is {user!r}; user ids are non-empty strings")
    if user in seen:
      raise ConversionError(f'{file}: user {user!r} is listed twice in "users"')
    seen.add(user)
    entry = user_data.get(user)
    if entry is None:
      raise ConversionError(f'{file}: user {user!r} is in "users" but has no "user_data"')
    if not (isinstance(entry, dict) and isinstance(entry.get("x"), list) and isinstance(entry.get("y"), list)):
      raise ConversionError(f'{file}: user {user!r}: user_data needs lists "x" and "y"')
    n = len(entry["x"])
    if len(entry["y"]) != n:
      raise ConversionError(f"{file}: user {user!r} has {n} x but {len(entry['y'])} y")
    if n == 0:
      raise ConversionError(f"{file}: user {user!r} has no examples")
    if num_samples is not None and num_samples[i] != n:
      disagree.append(f"user {user!r}: num_samples says {num_samples[i]} but user_data holds {n} examples")
  extra = [u for u in user_data if u not in seen]
  if extra:
    raise ConversionError(f'{file}: user {extra[0]!r} has user_data but is not in "users"')
  if disagree:
    # Current LEAF's split_data.py writes each Shakespeare test user's num_samples 79 larger than
    # the examples it keeps; LEAF's own models read user_data and ignore num_samples. So do we.
    warnings.warn(
      f"{file}: num_samples disagrees with user_data for {len(disagree)} of {len(users)} users (first: "
      f"{disagree[0]}); converting the examples user_data holds, as LEAF's models do",
      ConversionWarning,
      stacklevel=2,
    )
  return obj


def leaf_files(split_dir: str) -> list[str]:
  """The split's ``*.json`` files, sorted by name."""
  if not os.path.isdir(split_dir):
    raise ConversionError(f"{split_dir}: not a directory (expected LEAF's data/<dataset>/data/<split>)")
  files = sorted(f for f in os.listdir(split_dir) if f.endswith(".json"))
  if not files:
    raise ConversionError(f"{split_dir}: holds no .json files")
  return [os.path.join(split_dir, f) for f in files]


# --------------------------------------------------------------------------------------------
# Per-dataset encoders (per user, vectorised over the user's examples).


def _int_labels(ys: list, where: str, num_classes: int | None) -> np.ndarray:
  try:
    arr = np.asarray(ys)
  except ValueError:
    arr = np.asarray(ys, dtype=object)
  if arr.ndim == 1 and arr.dtype.kind == "f":
    # FedProx's Synthetic(alpha, beta) files store labels as floats (4.0): whole numbers are labels.
    whole = np.isfinite(arr) & (arr == np.round(arr))
    if whole.all():
      arr = arr.astype(np.int64)
    else:
      bad = int(np.flatnonzero(~whole)[0])
      raise ConversionError(f"{where}: y[{bad}] = {ys[bad]!r}; labels must be integers (or whole-number floats)")
  if arr.ndim != 1 or arr.dtype.kind not in "iu":
    bad = next((i for i, v in enumerate(ys) if not isinstance(v, int) or isinstance(v, bool)), 0)
    raise ConversionError(f"{where}: y[{bad}] = {ys[bad]!r}; labels must be integers")
  hi = num_classes if num_classes is not None else np.iinfo(np.int32).max
  bad = np.flatnonzero((arr < 0) | (arr >= hi))
  if bad.size:
    i = int(bad[0])
    limit = f"the {num_classes} classes" if num_classes is not None else "int32 >= 0"
    raise ConversionError(f"{where}: y[{i}] = {int(arr[i])} is outside {limit}")
  return arr.astype(np.int32)


def _float_matrix(xs: list, width: int | None, where: str) -> np.ndarray:
  try:
    arr = np.asarray(xs, dtype=np.float32)
  except (ValueError, TypeError):
    arr = None
  if arr is None or arr.ndim != 2 or (width is not None and arr.shape[1] != width):
    for i, x in enumerate(xs):
      if not isinstance(x, list) or (width is not None and len(x) != width):
        got = f"{len(x)} values" if isinstance(x, list) else type(x).__name__
        raise ConversionError(
          f"{where}: x[{i}] has {got}; expected {width if width is not None else 'equal-length lists of'} numbers"
        )
    raise ConversionError(f"{where}: x holds non-numeric values")
  if not np.all(np.isfinite(arr)):
    i = int(np.flatnonzero(~np.all(np.isfinite(arr), axis=1))[0])
    raise ConversionError(f"{where}: x[{i}] holds a non-finite value")
  return arr


def _femnist(xs: list, ys: list, where: str) -> tuple[np.ndarray, np.ndarray]:
  size = FEMNIST_SHAPE[0] * FEMNIST_SHAPE[1]
  x = _float_matrix(xs, size, where)
  bad = np.flatnonzero((x.min(axis=1) < 0) | (x.max(axis=1) > 1))
  if bad.size:
    raise ConversionError(f"{where}: x[{int(bad[0])}] has pixel values outside [0, 1]")
  pixels = np.rint(x * 255).astype(np.uint8).reshape(-1, *FEMNIST_SHAPE)
  return pixels, _int_labels(ys, where, len(FEMNIST_LABELS))


def shakespeare_indices(strings: Sequence[str], length: int | None, where: str) -> np.ndarray:
  """Strings of equal length -> int32 [n, length] indices into `ALL_LETTERS` (vectorised).

  Raises:
    ConversionError: for a non-string, a wrong length or a symbol outside the vocabulary.
  """
  if not all(isinstance(s, str) for s in strings):
    i = next(i for i, s in enumerate(strings) if not isinstance(s, str))
    raise ConversionError(f"{where}: element {i} is {type(strings[i]).__name__}, not a string")
  lengths = np.fromiter(map(len, strings), np.int64, len(strings))
  length = int(lengths[0]) if length is None else length
  bad = np.flatnonzero(lengths != length)
  if bad.size:
    i = int(bad[0])
    raise ConversionError(f"{where}: element {i} has {lengths[i]} characters; expected {length}")
  codes = np.frombuffer("".join(strings).encode("utf-32-le"), np.uint32)
  idx = np.where(codes < 128, _LETTER_LUT[np.minimum(codes, 127)], -1)
  bad = np.flatnonzero(idx < 0)
  if bad.size:
    k = int(bad[0])
    raise ConversionError(
      f"{where}: element {k // max(length, 1)} holds {chr(codes[k])!r}, which is not in LEAF's 80-symbol ALL_LETTERS"
    )
  return idx.reshape(len(strings), length)


def tokenize(text: str) -> list[str]:
  """Sent140 tokens: lowercased, LEAF's ``split_line`` pattern (words and ``.,!?;``)."""
  return _TOKEN.findall(text.lower())


class _Sent140Tokens:
  """Tokens -> provisional ids (first-seen order), counted on the training split only."""

  def __init__(self):
    self.word_ids: dict[str, int] = {}

  def encode(self, xs: list, where: str) -> tuple[np.ndarray, np.ndarray]:
    flat: list[int] = []
    lengths = np.empty(len(xs), np.int64)
    ids = self.word_ids
    for i, record in enumerate(xs):
      if not (isinstance(record, list) and len(record) >= 5 and isinstance(record[4], str)):
        raise ConversionError(
          f"{where}: x[{i}] = {str(record)[:80]}; expected a tweet record [id, date, query, user, text]"
        )
      tokens = tokenize(record[4])
      lengths[i] = len(tokens)
      flat.extend(ids.setdefault(t, len(ids)) for t in tokens)
    return np.asarray(flat, np.int32), lengths

  def vocabulary(self, train_ids: np.ndarray, size: int) -> tuple[list[str], np.ndarray]:
    """The ``size`` most frequent training tokens and the provisional -> final id table."""
    counts = np.bincount(train_ids, minlength=len(self.word_ids))
    words = np.array(list(self.word_ids), dtype=object)
    seen = np.flatnonzero(counts > 0)
    ranked = sorted(seen.tolist(), key=lambda p: (-counts[p], words[p]))[:size]
    lut = np.full(len(self.word_ids), OOV_ID, np.int32)
    lut[np.asarray(ranked, np.int64)] = np.arange(len(ranked), dtype=np.int32) + 2
    return [str(words[p]) for p in ranked], lut


def _pad_truncate(flat: np.ndarray, lengths: np.ndarray, max_len: int) -> np.ndarray:
  """Ragged token rows -> [n, max_len], first max_len tokens kept, PAD_ID after (vectorised)."""
  n = len(lengths)
  out = np.full((n, max_len), PAD_ID, np.int32)
  keep = np.minimum(lengths, max_len)
  total = int(keep.sum())
  rows = np.repeat(np.arange(n), keep)
  cols = np.arange(total) - np.repeat(np.cumsum(keep) - keep, keep)
  starts = np.cumsum(lengths) - lengths
  out[rows, cols] = flat[np.repeat(starts, keep) + cols]
  return out


def _encode_file(
  file: str, dataset: str, tokens: _Sent140Tokens | None = None
) -> tuple[str, list[tuple[str, Any, Any]]]:
  """Reads one LEAF file and encodes every user: ``(file, [(user, x, y), ...])``."""
  obj = read_leaf_file(file)
  encoded = []
  for user in obj["users"]:
    entry = obj["user_data"][user]
    x_raw, y_raw = entry["x"], entry["y"]
    where = f"{file}: user {user!r}"
    if dataset == "femnist":
      x, y = _femnist(x_raw, y_raw, where)
    elif dataset == "shakespeare":
      x = shakespeare_indices(x_raw, None, f"{where}: x")
      y = shakespeare_indices(y_raw, 1, f"{where}: y")[:, 0]
    elif dataset == "sent140":
      x = tokens.encode(x_raw, where)
      y = _int_labels(y_raw, where, len(SENT140_LABELS))
    else:
      x = _float_matrix(x_raw, None, where)
      y = _int_labels(y_raw, where, None)
    encoded.append((user, x, y))
  return file, encoded


def _encode_file_star(args: tuple[str, str]) -> tuple[str, list[tuple[str, Any, Any]]]:
  return _encode_file(*args)


def _map_files(files: list[str], dataset: str, tokens: _Sent140Tokens | None, num_workers: int):
  """Encodes the files in order; in ``num_workers`` forked processes where that helps.

  JSON parsing is the cost (Python's json makes an object per number), one file per process.
  Sent140 stays in this process: its token ids come from one shared table.
  """
  workers = min(num_workers, len(files))
  if workers <= 1 or dataset == "sent140" or "fork" not in multiprocessing.get_all_start_methods():
    for file in files:
      yield _encode_file(file, dataset, tokens)
    return
  # fork: the children need nothing but this module's functions, and they start in
  # milliseconds (spawn would re-import JAX through fedjaxscale in every worker).
  with multiprocessing.get_context("fork").Pool(workers) as pool:
    yield from pool.imap(_encode_file_star, [(f, dataset) for f in files])


# --------------------------------------------------------------------------------------------
# Conversion.


def convert_leaf(
  input_dir: str,
  output_dir: str,
  dataset: str,
  *,
  splits: Sequence[str] = ("train", "test"),
  vocab_size: int = 10_000,
  max_len: int = 25,
  num_workers: int = 1,
  overwrite: bool = False,
  verbose: bool = True,
) -> dict[str, FederatedDataset]:
  """Converts LEAF's ``<input_dir>/<split>/*.json`` into ``<output_dir>/<split>``.

  Args:
    input_dir: LEAF's ``data/<dataset>/data`` (the directory holding ``train/``, ``test/``).
    output_dir: receives one dataset directory per split (and ``vocab.txt`` for sent140).
    dataset: one of `DATASETS`; selects how ``x`` and ``y`` are parsed.
    splits: split directories to convert. For sent140 the first one builds the vocabulary
      (LEAF's ``train``).
    vocab_size: sent140: words kept (ids 2..vocab_size+1).
    max_len: sent140: tokens kept per tweet.
    num_workers: processes parsing JSON files in parallel (not for sent140). Each holds one
      parsed file in memory (about 0.5 GB for one of LEAF's FEMNIST files).
    overwrite: replace existing split directories.
    verbose: print progress to stderr.

  Returns:
    ``{split: FederatedDataset}``, reopened from disk.

  Raises:
    ConversionError: for a malformed source (naming the file and user) or existing outputs
      without ``overwrite`` (checked before anything is written).

  Example::

    convert_leaf('leaf/data/femnist/data', 'datasets/femnist', 'femnist')
  """
  if dataset not in DATASETS:
    raise ConversionError(f"unknown LEAF dataset {dataset!r}; expected one of {DATASETS}")
  if not splits:
    raise ConversionError("no splits given")
  if dataset == "sent140" and (vocab_size < 1 or max_len < 1):
    raise ConversionError("sent140 needs vocab_size >= 1 and max_len >= 1")
  extra = (VOCAB_FILE,) if dataset == "sent140" else ()
  _splits_io.check_outputs(output_dir, splits, overwrite, extra)
  progress = _splits_io.Progress(f"leaf/{dataset}", enabled=verbose)

  tokens = _Sent140Tokens() if dataset == "sent140" else None
  row_shape = seq_len = dim = None
  parsed = {}
  for split in splits:
    files = leaf_files(os.path.join(input_dir, split))
    users, sizes, xs, ys = [], [], [], []
    owner: dict[str, str] = {}
    for file, encoded in _map_files(files, dataset, tokens, num_workers):
      for user, x, y in encoded:
        if user in owner:
          raise ConversionError(
            f"{file}: user {user!r} also appears in {owner[user]}; a user may appear in one file per split"
          )
        owner[user] = file
        if dataset in ("shakespeare", "synthetic"):
          shape = x.shape[1:]
          if row_shape is None:
            row_shape = (file, user, shape)
          elif shape != row_shape[2]:
            raise ConversionError(
              f"{file}: user {user!r} has x of shape {list(shape)} per example but user "
              f"{row_shape[1]!r} of {row_shape[0]} has {list(row_shape[2])}"
            )
        users.append(user)
        sizes.append(len(y))
        xs.append(x)
        ys.append(y)
      progress.update(
        f"{split}: read {os.path.basename(file)} ({len(users):,} clients, {sum(sizes):,} examples so far)"
      )
    parsed[split] = (users, sizes, xs, ys, files)
    progress.update(
      f"{split}: parsed {len(users):,} clients, {sum(sizes):,} examples from {len(files)} files", force=True
    )
  if row_shape is not None:
    seq_len = dim = row_shape[2][0]

  provenance = {
    "source": "LEAF JSON (github.com/TalwalkarLab/leaf)",
    "converter": "data_pipelines.leaf",
    "dataset": dataset,
    "input_dir": input_dir,
  }
  label_names: Sequence[str] | None = None
  if dataset == "femnist":
    label_names = FEMNIST_LABELS
  elif dataset == "shakespeare":
    label_names = list(ALL_LETTERS)
    provenance.update(vocabulary="LEAF ALL_LETTERS", seq_len=seq_len)
  elif dataset == "sent140":
    label_names = SENT140_LABELS
    train_ids = np.concatenate([flat for flat, _ in parsed[splits[0]][2]])
    vocab, lut = tokens.vocabulary(train_ids, vocab_size)
    provenance.update(
      vocab_file=f"../{VOCAB_FILE}",
      vocab_size=len(vocab) + 2,
      vocab_split=splits[0],
      vocab_max_words=vocab_size,
      max_len=max_len,
      pad_id=PAD_ID,
      oov_id=OOV_ID,
      tokenizer="lowercase + LEAF split_line "
      r"[\w']+|[.,!?;]",
      text_field=4,
    )
    for _, _, xs, _, _ in parsed.values():
      xs[:] = [_pad_truncate(lut[flat], lengths, max_len) for flat, lengths in xs]
  else:
    num_classes = 1 + max(int(y.max()) for p in parsed.values() for y in p[3])
    provenance.update(dim=dim, num_classes=num_classes)

  os.makedirs(output_dir, exist_ok=True)
  if dataset == "sent140":
    with open(os.path.join(output_dir, VOCAB_FILE), "w", encoding="utf-8") as f:
      f.write("\n".join(["<pad>", "<oov>", *vocab]) + "\n")
  out = {}
  for split, (users, sizes, xs, ys, files) in parsed.items():
    features_of = {"x": np.concatenate(xs), "y": np.concatenate(ys)}
    out[split] = write_dataset(
      os.path.join(output_dir, split),
      users,
      features_of,
      np.asarray(sizes, np.int64),
      label_names=label_names,
      overwrite=overwrite,
      provenance=dict(provenance, split=split, files=[os.path.basename(f) for f in files]),
    )
    del features_of
    num_classes = len(label_names) if label_names is not None else provenance.get("num_classes")
    print(_splits_io.summary_line(split, out[split], num_classes), flush=True)
  return out


# --------------------------------------------------------------------------------------------
# Command line.


def define_flags() -> None:
  """Defines the CLI flags. Called only when run as a program: absl flags are process-global,
  and several converters defining ``--output_dir`` in one process (a test run) would clash."""
  flags.DEFINE_string("input_dir", None, "LEAF's data/<dataset>/data directory (holding train/ and test/).")
  flags.DEFINE_enum("dataset", None, list(DATASETS), "Which LEAF dataset the JSON is.")
  flags.DEFINE_string("output_dir", None, "Receives one directory per split.")
  flags.DEFINE_list("splits", ["train", "test"], "LEAF split directories to convert.")
  flags.DEFINE_integer(
    "vocab_size", 10_000, "sent140: most frequent train words kept (plus the pad and out-of-vocabulary ids)."
  )
  flags.DEFINE_integer("max_len", 25, "sent140: tokens kept per tweet (padded with 0).")
  flags.DEFINE_integer(
    "num_workers", min(4, os.cpu_count() or 1), "Processes parsing JSON files in parallel (each holds one parsed file)."
  )
  flags.DEFINE_boolean("overwrite", False, "Replace existing split directories.")
  flags.mark_flags_as_required(["input_dir", "dataset", "output_dir"])


def main(argv: Sequence[str]) -> None:
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {argv[1:]}")
  f = flags.FLAGS
  _splits_io.run_main(
    lambda: convert_leaf(
      f.input_dir,
      f.output_dir,
      f.dataset,
      splits=f.splits,
      vocab_size=f.vocab_size,
      max_len=f.max_len,
      num_workers=f.num_workers,
      overwrite=f.overwrite,
    )
  )


if __name__ == "__main__":
  define_flags()
  app.run(main)
