"""FedJAX and TFF SQLite files (EMNIST, Shakespeare, StackOverflow, CIFAR-100) -> the layout.

Two source formats:

- ``fedjax``: FedJAX's ``SQLiteFederatedData`` (``fedjax/core/sqlite_federated_data.py``), one
  row per client::

      CREATE TABLE federated_data (client_id BLOB NOT NULL PRIMARY KEY, data BLOB NOT NULL,
                                   num_examples INTEGER NOT NULL);

  ``data`` is zlib-compressed msgpack of ``{feature: array}`` (`_fedjax_msgpack`). One file per
  split (``federated_emnist_train.sqlite``, ``shakespeare_test.sqlite``, ...). Clients are kept
  in FedJAX's order (``rowid``).
- ``tff``: TFF's ``SqlClientData`` (``tff.simulation.datasets``), one row per example::

      CREATE TABLE examples (split_name TEXT NOT NULL, client_id TEXT NOT NULL,
                             serialized_example_proto BLOB NOT NULL);
      CREATE TABLE client_metadata (client_id TEXT NOT NULL, split_name TEXT NOT NULL,
                                    num_examples INTEGER NOT NULL);

  with a serialized ``tf.train.Example`` per row, decoded without TensorFlow by a small
  wire-format parser (`_tf_example`). One file holds every split (``--train_split``,
  ``--test_split``: ``train``/``test``; StackOverflow's third is ``heldout``). Clients are
  sorted by id, as TFF and FedJAX's TFF reader list them; examples keep row order.

Stored features (details and vocabularies in `_sqlite_datasets`):

- emnist: x uint8 [28, 28] = round(255 * pixels), stored as given: the source's background is
  1.0, so 255 (the same orientation as the LEAF FEMNIST converter and as TFF / Reddi et al.
  feed their models; a model divides by 255). ``--emnist_invert`` stores ``1 - pixels`` instead
  (FedJAX's model input: ink 255, background 0). y int32 in [0, 62), names ``0-9A-Za-z``.
- cifar100: x uint8 [32, 32, 3]; y int32 fine label (100 names); coarse_label int32 (20).
- shakespeare: x, y int32 [seq_len] (default 80): FedJAX's preprocessing (snippets joined with
  BOS/EOS, cut into rows, y = x shifted by one). Vocabulary of 90: PAD 0, BOS 1, EOS 2, the 86
  symbols 3..88, OOV 89; stored as label_names.
- stackoverflow: x, y int32 [seq_len] (default 20): FedJAX's tokenizer: ids PAD 0, BOS 1, EOS 2,
  vocabulary word i -> i + 3, one OOV bucket = vocab_size + 3; x = [BOS, w1..], y = [w1.., EOS],
  truncated to seq_len. The vocabulary (default 10,000 words) is read from ``--vocab_file``
  (TFF's ``stackoverflow.word_count``) or, without it, built from the train split as the words
  found in the most clients (TFF's definition of its counts). label_names holds all ids' tokens.

A split's rows are spooled to disk client by client, so memory stays bounded by one client.

Command::

    python -m data_pipelines.sqlite --format=fedjax --dataset=emnist \\
        --train=federated_emnist_train.sqlite --test=federated_emnist_test.sqlite \\
        --output_dir=datasets/emnist
"""

from __future__ import annotations

import collections
import concurrent.futures
import itertools
import os
import shutil
import sqlite3
import tempfile
import urllib.parse
from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import Any

import numpy as np
from absl import app, flags

from data_pipelines import _fedjax_msgpack, _splits_io, _tf_example
from data_pipelines import _sqlite_datasets as ds_lib
from data_pipelines.errors import ConversionError
from fedjaxscale.data.dataset import FederatedDataset, write_dataset

__all__ = [
  "DATASETS",
  "FEDJAX_SCHEMA",
  "FORMATS",
  "TFF_SCHEMA",
  "convert_sqlite",
  "read_fedjax_clients",
  "read_tff_clients",
  "write_fedjax_sqlite",
  "write_tff_sqlite",
]

FORMATS = ("fedjax", "tff")
DATASETS = ("emnist", "shakespeare", "stackoverflow", "cifar100")
# Table -> columns that must exist (other columns and tables are ignored).
FEDJAX_SCHEMA = {"federated_data": ("client_id", "data", "num_examples")}
TFF_SCHEMA = {
  "examples": ("split_name", "client_id", "serialized_example_proto"),
  "client_metadata": ("client_id", "split_name", "num_examples"),
}


# --------------------------------------------------------------------------------------------
# Reading.


def _connect(path: str, schema: Mapping[str, Sequence[str]], fmt: str) -> sqlite3.Connection:
  """Opens ``path`` read-only and checks that it has ``schema``'s tables and columns."""
  if not os.path.isfile(path):
    raise ConversionError(f"{path}: no such file")
  uri = "file:" + urllib.parse.quote(os.path.abspath(path)) + "?mode=ro"
  conn = sqlite3.connect(uri, uri=True)
  try:
    found = {
      name: [r[1] for r in conn.execute(f'PRAGMA table_info("{name}")')]
      for (name,) in conn.execute("SELECT name FROM sqlite_master WHERE type='table' ORDER BY name")
    }
  except sqlite3.DatabaseError as e:
    conn.close()
    raise ConversionError(f"{path}: not an SQLite database ({e})") from None
  problems = [
    t if t not in found else f"{t}.{c}"
    for t, cols in schema.items()
    for c in ([None] if t not in found else cols)
    if t not in found or c not in found[t]
  ]
  if problems:
    conn.close()
    expected = "; ".join(f"{t}({', '.join(c)})" for t, c in schema.items())
    got = "; ".join(f"{t}({', '.join(c)})" for t, c in found.items()) or "no tables"
    raise ConversionError(
      f"{path}: not a {fmt} SQLite file: missing {', '.join(problems)}. Expected tables: {expected}. Found: {got}"
    )
  return conn


def _client_id(raw: Any, where: str) -> str:
  if isinstance(raw, bytes):
    try:
      return raw.decode("utf-8")
    except UnicodeDecodeError:
      raise ConversionError(f"{where}: client_id {raw[:40]!r} is not UTF-8") from None
  if isinstance(raw, str):
    return raw
  raise ConversionError(f"{where}: client_id is {type(raw).__name__} {raw!r}, not text")


def read_fedjax_clients(path: str, *, threads: int | None = None) -> Iterator[tuple[str, dict[str, np.ndarray]]]:
  """Yields ``(client id, {feature: array})`` from a FedJAX SQLite file, in FedJAX's order.

  Blobs are decompressed on ``threads`` threads (zlib releases the GIL; default: up to 4 by
  CPU count), a few clients ahead of the consumer, so memory stays a few clients' worth.

  Raises:
    ConversionError: for another schema, an undecodable blob, a count that disagrees with
      ``num_examples``, or a client with no examples (naming the file and the client).
  """
  conn = _connect(path, FEDJAX_SCHEMA, "FedJAX")
  threads = threads or min(4, os.cpu_count() or 1)
  try:
    rows = conn.execute("SELECT rowid, client_id, data, num_examples FROM federated_data ORDER BY rowid")
    with concurrent.futures.ThreadPoolExecutor(threads) as pool:
      window = collections.deque()
      for row in rows:
        window.append(pool.submit(_decode_fedjax_row, path, *row))
        if len(window) > 2 * threads:
          yield window.popleft().result()
      while window:
        yield window.popleft().result()
  finally:
    conn.close()


def _decode_fedjax_row(path, rowid, raw_id, blob, num_examples):
  cid = _client_id(raw_id, f"{path}: federated_data row {rowid}")
  where = f"{path}: client {cid!r}"
  if not isinstance(blob, bytes):
    raise ConversionError(f"{where}: data is {type(blob).__name__}, not a blob")
  try:
    cols = _fedjax_msgpack.deserialize_client(blob)
  except _fedjax_msgpack.BlobError as e:
    raise ConversionError(f"{where}: data blob: {e}") from None
  sizes = {k: (v.shape[0] if v.ndim else None) for k, v in cols.items()}
  if len(set(sizes.values())) > 1 or None in sizes.values():
    raise ConversionError(f"{where}: features have different example counts {sizes}")
  n = next(iter(sizes.values()), 0)
  if n == 0:
    raise ConversionError(f"{where}: has no examples")
  if n != num_examples:
    raise ConversionError(f"{where}: num_examples is {num_examples} but its data holds {n}")
  return cid, cols


def read_tff_clients(path: str, split_name: str, dataset: str) -> Iterator[tuple[str, dict[str, np.ndarray]]]:
  """Yields ``(client id, {feature: array})`` of one split of a TFF SQLite file, by client id.

  The protos' features named in `_sqlite_datasets.SOURCE_FEATURES` are stacked into FedJAX-like
  columns (``[n, *shape]``; bytes features as object arrays). Clients come from
  ``client_metadata``; each must have exactly ``num_examples`` rows in ``examples``.

  Raises:
    ConversionError: for another schema, an unknown split, a malformed proto, a client with no
      examples, or examples of a client missing from ``client_metadata``.
  """
  spec = ds_lib.SOURCE_FEATURES[dataset]
  conn = _connect(path, TFF_SCHEMA, "TFF")
  try:
    meta = conn.execute(
      "SELECT client_id, num_examples FROM client_metadata WHERE split_name = ? ORDER BY client_id", (split_name,)
    ).fetchall()
    if not meta:
      splits = sorted(r[0] for r in conn.execute("SELECT DISTINCT split_name FROM client_metadata"))
      raise ConversionError(f"{path}: no clients in split {split_name!r} (splits in client_metadata: {splits})")
    rows = conn.execute(
      "SELECT client_id, rowid, serialized_example_proto FROM examples WHERE split_name = ? ORDER BY client_id, rowid",
      (split_name,),
    )
    groups = itertools.groupby(rows, key=lambda r: r[0])
    pending = next(groups, None)
    previous = None
    for raw_id, num_examples in meta:
      cid = _client_id(raw_id, f"{path}: split {split_name!r}: client_metadata")
      where = f"{path}: split {split_name!r}: client {cid!r}"
      if raw_id == previous:
        raise ConversionError(f"{where}: listed twice in client_metadata")
      previous = raw_id
      if pending is not None and pending[0] < raw_id:
        raise ConversionError(
          f"{path}: split {split_name!r}: client {pending[0]!r} has examples but no client_metadata row"
        )
      if pending is None or pending[0] != raw_id:
        raise ConversionError(f"{where}: has no examples")
      cols = _stack_protos(pending[1], spec, where)
      pending = next(groups, None)
      n = len(next(iter(cols.values())))
      if n != num_examples:
        raise ConversionError(f"{where}: client_metadata says {num_examples} examples, the examples table holds {n}")
      yield cid, cols
    if pending is not None:
      raise ConversionError(
        f"{path}: split {split_name!r}: client {pending[0]!r} has examples but no client_metadata row"
      )
  finally:
    conn.close()


def _stack_protos(rows, spec, where: str) -> dict[str, np.ndarray]:
  wanted = [(name, kind, int(np.prod(shape))) for name, (kind, shape) in spec.items()]
  values = {name: [] for name in spec}
  for _, rowid, blob in rows:
    try:
      parsed = _tf_example.parse_example(blob)
    except (_tf_example.ProtoError, TypeError) as e:
      raise ConversionError(f"{where}: examples row {rowid}: not a tf.train.Example ({e})") from None
    for name, kind, size in wanted:
      got = parsed.get(name)
      if got is None:
        raise ConversionError(f"{where}: examples row {rowid} has features {sorted(parsed)}, missing {name!r}")
      got_kind, v = got
      if got_kind != kind or len(v) != size:
        raise ConversionError(
          f"{where}: examples row {rowid}: feature {name!r} is "
          f"{len(v)} x {got_kind}, expected {size} x {kind} "
          f"{list(spec[name][1])}"
        )
      values[name].append(v[0] if kind == "bytes" else v)
  cols = {}
  for name, (kind, shape) in spec.items():
    if kind == "bytes":
      arr = np.empty(len(values[name]), object)
      arr[:] = values[name]
    else:
      arr = np.concatenate(values[name]).reshape(-1, *shape)
    cols[name] = arr
  return cols


# --------------------------------------------------------------------------------------------
# Converting.


class _Spool:
  """Appends each client's feature rows to raw files, then exposes them as memory maps."""

  def __init__(self, directory: str):
    self._dir = directory
    self._files: dict[str, Any] = {}
    self._specs: dict[str, tuple[np.dtype, tuple[int, ...]]] = {}
    self.rows = 0

  def append(self, features: Mapping[str, np.ndarray]) -> int:
    n = None
    for name, arr in features.items():
      arr = np.ascontiguousarray(arr)
      spec = (arr.dtype, arr.shape[1:])
      if name not in self._files:
        self._specs[name] = spec
        self._files[name] = open(os.path.join(self._dir, name + ".bin"), "wb")
      assert self._specs[name] == spec, (name, self._specs[name], spec)
      n = arr.shape[0]
      self._files[name].write(arr.tobytes())
    self.rows += n
    return n

  def arrays(self) -> dict[str, np.ndarray]:
    out = {}
    for name, f in self._files.items():
      f.close()
      dtype, shape = self._specs[name]
      out[name] = np.memmap(f.name, dtype=dtype, mode="r", shape=(self.rows, *shape))
    return out


def _read_clients(fmt: str, path: str, split_name: str, dataset: str):
  return read_fedjax_clients(path) if fmt == "fedjax" else read_tff_clients(path, split_name, dataset)


def convert_sqlite(
  fmt: str,
  dataset: str,
  train: str,
  output_dir: str,
  *,
  test: str | None = None,
  overwrite: bool = False,
  vocab_size: int = 10_000,
  vocab_file: str | None = None,
  seq_len: int | None = None,
  train_split: str = "train",
  test_split: str = "test",
  emnist_only_digits: bool = False,
  emnist_invert: bool = False,
  progress: bool = True,
) -> dict[str, FederatedDataset]:
  """Converts FedJAX or TFF SQLite split(s) of one dataset into ``output_dir/{train,test}``.

  Args:
    fmt: ``'fedjax'`` or ``'tff'`` (see the module docstring for both schemas).
    dataset: one of `DATASETS`.
    train: the train SQLite file.
    output_dir: receives ``train/`` and, with ``test``, ``test/``.
    test: the test SQLite file (for TFF usually the same file as ``train``).
    overwrite: replace existing split directories (checked for all splits before any work).
    vocab_size: stackoverflow: words kept (plus PAD/BOS/EOS and one OOV id).
    vocab_file: stackoverflow: a word-count file (most frequent first); without it the
      vocabulary is built from the train split.
    seq_len: shakespeare/stackoverflow row length (defaults 80 and 20).
    train_split, test_split: TFF ``split_name`` values to read.
    emnist_only_digits: emnist: a digits-only file (10 classes).
    emnist_invert: emnist: store ``1 - pixels`` (ink 255) instead of the pixels as given.
    progress: print progress lines to stderr.

  Returns:
    ``{split: FederatedDataset}`` of what was written.

  Example::

    convert_sqlite('fedjax', 'emnist', 'federated_emnist_train.sqlite', 'datasets/emnist',
                   test='federated_emnist_test.sqlite')
  """
  if fmt not in FORMATS:
    raise ConversionError(f"unknown format {fmt!r}; expected one of {FORMATS}")
  if dataset not in DATASETS:
    raise ConversionError(f"unknown dataset {dataset!r}; expected one of {DATASETS}")
  if seq_len is None:
    seq_len = ds_lib.DEFAULT_SEQ_LEN.get(dataset)
  if seq_len is not None and seq_len < 1:
    raise ConversionError(f"seq_len must be positive, got {seq_len}")
  if vocab_size < 1:
    raise ConversionError(f"vocab_size must be positive, got {vocab_size}")
  sources = {"train": (train, train_split)}
  if test is not None:
    sources["test"] = (test, test_split)
  _splits_io.check_outputs(output_dir, list(sources), overwrite)
  for path, _ in sources.values():
    if not os.path.isfile(path):
      raise ConversionError(f"{path}: no such file")

  params: dict[str, Any] = {}
  label_names: list[str] | None = None
  if dataset == "emnist":
    label_names = list(ds_lib.EMNIST_LABELS[:10] if emnist_only_digits else ds_lib.EMNIST_LABELS)
    params.update(
      pixels="x = round(255 * (1 - pixels))" if emnist_invert else "x = round(255 * pixels) (background 255)",
      only_digits=emnist_only_digits,
    )
    process = lambda cols, where: ds_lib.emnist(cols, where, only_digits=emnist_only_digits, invert=emnist_invert)
  elif dataset == "cifar100":
    label_names = list(ds_lib.CIFAR100_LABELS)
    params.update(coarse_label_names=list(ds_lib.CIFAR100_COARSE_LABELS))
    process = ds_lib.cifar100
  elif dataset == "shakespeare":
    label_names = list(ds_lib.SHAKESPEARE_VOCAB)
    params.update(seq_len=seq_len, pad=ds_lib.PAD, bos=ds_lib.BOS, eos=ds_lib.EOS, oov=ds_lib.SHAKESPEARE_OOV)
    process = lambda cols, where: ds_lib.shakespeare(cols, where, seq_len=seq_len)
  else:
    if vocab_file is not None:
      vocab = ds_lib.read_vocab_file(vocab_file, vocab_size)
      params.update(vocab_source=os.path.basename(vocab_file))
    else:
      vocab = _vocab_from_split(fmt, train, train_split, vocab_size, progress)
      params.update(vocab_source="train split: words in the most clients")
    table = ds_lib.vocab_table(vocab)
    label_names = ds_lib.stackoverflow_label_names(vocab)
    params.update(
      seq_len=seq_len,
      vocab_size=len(vocab),
      num_oov_buckets=1,
      pad=ds_lib.PAD,
      bos=ds_lib.BOS,
      eos=ds_lib.EOS,
      oov=len(vocab) + 3,
    )
    process = lambda cols, where: ds_lib.stackoverflow(cols, where, table=table, seq_len=seq_len)

  os.makedirs(output_dir, exist_ok=True)
  spool_root = tempfile.mkdtemp(prefix=".sqlite-spool-", dir=output_dir)
  try:
    spooled = {}
    for split, (path, split_name) in sources.items():
      spooled[split] = _convert_split(
        fmt, dataset, path, split_name, process, os.path.join(spool_root, split), progress
      )
    out = {}
    for split, (ids, sizes, spool, source_examples) in spooled.items():
      path, split_name = sources[split]
      provenance = {
        "converter": "data_pipelines.sqlite",
        "source_format": f"{fmt}_sqlite",
        "dataset": dataset,
        "source_file": os.path.basename(path),
        "source_examples": source_examples,
        **params,
      }
      if fmt == "tff":
        provenance["split_name"] = split_name
      out[split] = write_dataset(
        os.path.join(output_dir, split),
        ids,
        spool.arrays(),
        np.asarray(sizes, np.int64),
        label_names=label_names,
        provenance=provenance,
        overwrite=overwrite,
      )
      print(_splits_io.summary_line(split, out[split], len(label_names)), flush=True)
    return out
  finally:
    shutil.rmtree(spool_root, ignore_errors=True)


def _convert_split(fmt, dataset, path, split_name, process: Callable, spool_dir, progress):
  os.makedirs(spool_dir)
  spool = _Spool(spool_dir)
  ids, sizes, source_examples = [], [], 0
  bar = _splits_io.Progress(f"sqlite {os.path.basename(path)}", enabled=progress)
  for cid, cols in _read_clients(fmt, path, split_name, dataset):
    where = f"{path}: client {cid!r}"
    source_examples += ds_lib.check_columns(dataset, cols, where)
    sizes.append(spool.append(process(cols, where)))
    ids.append(cid)
    bar.update(f"{len(ids):,} clients, {spool.rows:,} rows")
  bar.update(f"{len(ids):,} clients, {spool.rows:,} rows: done", force=True)
  return ids, sizes, spool, source_examples


def _vocab_from_split(fmt, path, split_name, vocab_size, progress) -> list[str]:
  bar = _splits_io.Progress(f"sqlite vocabulary {os.path.basename(path)}", enabled=progress)

  def word_sets():
    for i, (cid, cols) in enumerate(_read_clients(fmt, path, split_name, "stackoverflow")):
      where = f"{path}: client {cid!r}"
      ds_lib.check_columns("stackoverflow", cols, where)
      yield set(ds_lib.client_words(cols, where))
      bar.update(f"{i + 1:,} clients counted")

  return ds_lib.build_vocab(word_sets(), vocab_size)


# --------------------------------------------------------------------------------------------
# Writing sources (fixtures, benchmarks).


def write_fedjax_sqlite(path: str, clients) -> None:
  """Writes ``[(client id, {feature: array})]`` as FedJAX's SQLite builder does (ids as BLOB)."""
  with sqlite3.connect(path) as conn:
    conn.execute(
      "CREATE TABLE federated_data (client_id BLOB NOT NULL PRIMARY KEY, "
      "data BLOB NOT NULL, num_examples INTEGER NOT NULL)"
    )
    conn.executemany(
      "INSERT INTO federated_data VALUES (?, ?, ?)",
      (
        (
          cid.encode() if isinstance(cid, str) else cid,
          _fedjax_msgpack.serialize_client(ex),
          len(next(iter(ex.values()))),
        )
        for cid, ex in clients
      ),
    )
  conn.close()


def write_tff_sqlite(path: str, splits: Mapping[str, Sequence[tuple[str, Sequence[Mapping]]]]) -> None:
  """Writes ``{split: [(client id, [example, ...])]}`` as TFF's ``save_to_sql_client_data``
  does, each example a ``{feature: value}`` dict serialized by `_tf_example.encode_example`."""
  with sqlite3.connect(path) as conn:
    conn.execute(
      "CREATE TABLE examples (split_name TEXT NOT NULL, client_id TEXT NOT NULL, "
      "serialized_example_proto BLOB NOT NULL)"
    )
    conn.execute("CREATE INDEX idx_examples_client_id_split ON examples (split_name, client_id)")
    conn.execute(
      "CREATE TABLE client_metadata (client_id TEXT NOT NULL, split_name TEXT NOT NULL, num_examples INTEGER NOT NULL)"
    )
    for split, clients in splits.items():
      for cid, examples in clients:
        conn.executemany(
          "INSERT INTO examples VALUES (?, ?, ?)", ((split, cid, _tf_example.encode_example(e)) for e in examples)
        )
        conn.execute("INSERT INTO client_metadata VALUES (?, ?, ?)", (cid, split, len(examples)))
  conn.close()


# --------------------------------------------------------------------------------------------
# Command line.


def define_flags() -> None:
  """Defines the CLI flags. Called only when run as a program: absl flags are process-global,
  and several converters defining ``--output_dir`` in one process (a test run) would clash."""
  flags.DEFINE_enum(
    "format", None, list(FORMATS), "Source format: FedJAX (one row per client) or TFF (one tf.train.Example per row)."
  )
  flags.DEFINE_enum("dataset", None, list(DATASETS), "Which dataset the file holds.")
  flags.DEFINE_string("train", None, "Train SQLite file.")
  flags.DEFINE_string("test", None, "Test SQLite file (TFF: usually the --train file).")
  flags.DEFINE_string("output_dir", None, "Receives train/ and test/.")
  flags.DEFINE_boolean("overwrite", False, "Replace existing split directories.")
  flags.DEFINE_integer("vocab_size", 10_000, "stackoverflow: vocabulary words kept.")
  flags.DEFINE_string(
    "vocab_file",
    None,
    "stackoverflow: word-count file (TFF's stackoverflow.word_count); default: built from the train split.",
  )
  flags.DEFINE_integer("seq_len", None, "shakespeare/stackoverflow row length (default 80/20).")
  flags.DEFINE_string("train_split", "train", "TFF: split_name of the train split.")
  flags.DEFINE_string("test_split", "test", "TFF: split_name of the test split (heldout: StackOverflow's third split).")
  flags.DEFINE_boolean("emnist_only_digits", False, "emnist: a digits-only file (10 classes).")
  flags.DEFINE_boolean(
    "emnist_invert", False, "emnist: store 1 - pixels (ink 255) instead of the pixels as given (background 255)."
  )
  flags.mark_flags_as_required(["format", "dataset", "train", "output_dir"])


def main(argv: Sequence[str]) -> None:
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {argv[1:]}")
  f = flags.FLAGS
  _splits_io.run_main(
    lambda: convert_sqlite(
      f.format,
      f.dataset,
      f.train,
      f.output_dir,
      test=f.test,
      overwrite=f.overwrite,
      vocab_size=f.vocab_size,
      vocab_file=f.vocab_file,
      seq_len=f.seq_len,
      train_split=f.train_split,
      test_split=f.test_split,
      emnist_only_digits=f.emnist_only_digits,
      emnist_invert=f.emnist_invert,
    )
  )


if __name__ == "__main__":
  define_flags()
  app.run(main)
