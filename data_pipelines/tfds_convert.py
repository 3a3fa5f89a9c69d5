r"""Converts a TensorFlow Datasets (TFDS) dataset into the fedjaxscale layout, split into clients.

Any TFDS dataset already prepared under a TFDS data directory is read by name and split with
TFDS's own reading APIs, and its examples are given to clients in one of three ways:

- ``feature:NAME``: the natural partition. A feature of the dataset names each example's client
  (e.g. a writer or user id); every distinct value is one client, ids sorted.
- ``dirichlet:ALPHA`` with ``num_clients`` N: label skew after Hsu, Qi and Brown, "Measuring the
  Effects of Non-Identical Data Distribution for Federated Visual Classification" (2019,
  arXiv:1909.06335). Procedure (`dirichlet_label_distributions`, `partition_dirichlet`):

  1. ``p`` is the train split's label frequencies (the global prior).
  2. Each client k draws ``q_k ~ Dir(alpha * p)`` (classes absent from train get ``q = 0``).
  3. Client sizes are near-equal: ``n_k = n // N``, plus one for the first ``n % N`` clients.
  4. Clients are filled in order k = 0..N-1 without replacement: label counts
     ``c ~ Multinomial(n_k, w / sum(w))`` with ``w = q_k`` restricted to labels that still
     have examples; counts above what a label has left are cut back, and the shortfall is
     drawn again the same way until ``n_k`` examples are found (if every label of ``q_k`` is
     used up, ``w`` becomes the counts left, so late clients take what remains).
  5. Which examples of a label a client gets: each label's rows are shuffled once and clients
     take consecutive runs of that order.

  Large ``alpha`` gives IID clients; ``alpha -> 0`` gives one class per client.
- ``iid`` with ``num_clients`` N: a seeded shuffle cut into N near-equal parts.

Test split. ``feature:`` partitions the test split by the same feature (its clients may differ
from train's, as in EMNIST). ``dirichlet`` partitions the test split into the same N clients
(same ids) with the same ``q_k``, drawn by the procedure above from the test pool with sizes
``n_test // N``: each client's test data follows its own label distribution, so personalised
evaluation is meaningful, and the clients' union is the whole test split, so a centralised
evaluation (Hsu et al.'s) is the union. ``iid`` cuts the test split IID into the same N
clients. One ``seed`` fixes every draw.

Features: ``x_key`` (default ``image``) is stored as it comes (images uint8 ``[n, H, W, C]``;
int64 becomes int32 and float64 float32, ready for JAX); ``y_key`` (default ``label``) must be
a ``ClassLabel``, stored int32 in ``y`` with its class names as label names.

Reading. A dataset prepared in a random-access format (``array_record``, ``parquet``) is read
with ``builder.as_data_source(split)``, which needs only ``tensorflow-datasets``, not
TensorFlow. One prepared as ``tfrecord`` (TFDS's default) is read with
``tfds.as_numpy(builder.as_dataset(split))``, which needs TensorFlow. The chosen features of a
split are held in memory while it is partitioned.

Commands (preparing downloads, and for most datasets encodes with TensorFlow; the ``tfds build``
CLI of tensorflow-datasets 4.9.10 also wants apache-beam, so the Python call is simpler)::

    python -c "import tensorflow_datasets as tfds; tfds.builder('mnist', data_dir='$HOME/tfds',
        file_format='array_record').download_and_prepare()"
    python -m data_pipelines.tfds_convert --dataset=mnist --data_dir=$HOME/tfds \
        --partition=dirichlet:0.3 --num_clients=100 --seed=0 --output_dir=/data/mnist_dir03
"""

from __future__ import annotations

import dataclasses
import difflib
import math
import os
import sys
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
from absl import app, flags

from data_pipelines.errors import ConversionError
from fedjaxscale.data.dataset import DatasetError, FederatedDataset, write_dataset

__all__ = [
  "Partition",
  "SplitData",
  "convert_tfds",
  "dirichlet_label_distributions",
  "load_split",
  "parse_partition",
  "partition_by_feature",
  "partition_dirichlet",
  "partition_iid",
]

_CONVERTER = "data_pipelines.tfds_convert"
_CHUNK = 1024


def _tfds():
  try:
    import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top
  except ImportError as e:
    raise ConversionError(f'tensorflow-datasets is not installed ({e}); pip install "fedjaxscale[tfds]"') from None
  return tfds


# --------------------------------------------------------------------------------------------
# Partition specs.


@dataclasses.dataclass(frozen=True)
class Partition:
  """How examples are given to clients.

  Attributes:
    kind: ``'feature'``, ``'dirichlet'`` or ``'iid'``.
    feature: the client-naming feature (``kind == 'feature'``).
    alpha: the Dirichlet concentration (``kind == 'dirichlet'``).
    num_clients: N (``'dirichlet'`` and ``'iid'``).
  """

  kind: str
  feature: str | None = None
  alpha: float | None = None
  num_clients: int | None = None


def parse_partition(spec: str, num_clients: int | None = None) -> Partition:
  """Parses ``feature:NAME``, ``dirichlet:ALPHA`` or ``iid``.

  Example::

    parse_partition('dirichlet:0.5', num_clients=100)
    # -> Partition(kind='dirichlet', alpha=0.5, num_clients=100)

  Raises:
    ConversionError: for an unknown kind, alpha <= 0, or a missing/invalid ``num_clients``.
  """
  kind, _, arg = str(spec).partition(":")
  if kind == "feature":
    if not arg:
      raise ConversionError(f"partition {spec!r}: name the feature, e.g. feature:client_id")
    if num_clients is not None:
      raise ConversionError(
        f"partition {spec!r}: num_clients applies only to iid and dirichlet; the feature decides the clients"
      )
    return Partition("feature", feature=arg)
  if kind not in ("dirichlet", "iid"):
    raise ConversionError(f"partition {spec!r}: expected feature:NAME, dirichlet:ALPHA or iid")
  if num_clients is None or isinstance(num_clients, bool) or int(num_clients) != num_clients or num_clients < 1:
    raise ConversionError(f"partition {spec!r}: needs num_clients >= 1, got {num_clients!r}")
  if kind == "iid":
    if arg:
      raise ConversionError(f"partition {spec!r}: iid takes no argument; use num_clients")
    return Partition("iid", num_clients=int(num_clients))
  try:
    alpha = float(arg)
  except ValueError:
    raise ConversionError(f"partition {spec!r}: alpha {arg!r} is not a number") from None
  if not math.isfinite(alpha) or alpha <= 0:
    raise ConversionError(f"partition {spec!r}: alpha must be a finite number > 0, got {arg}")
  return Partition("dirichlet", alpha=alpha, num_clients=int(num_clients))


# --------------------------------------------------------------------------------------------
# Reading.


@dataclasses.dataclass
class SplitData:
  """One split's chosen features, in the source's row order.

  Attributes:
    x: ``[n, ...]`` inputs (x_key) as stored.
    y: ``[n]`` int32 labels (y_key).
    keys: ``[n]`` str client names (the partition feature), or None.
    label_names: the ClassLabel's names.
  """

  x: np.ndarray
  y: np.ndarray
  keys: np.ndarray | None
  label_names: list[str]


def open_builder(name: str, data_dir: str | None = None):
  """``tfds.builder(name, data_dir=data_dir)`` for a dataset prepared there.

  Raises:
    ConversionError: for an unknown name or a dataset not prepared under ``data_dir``.
  """
  tfds = _tfds()
  try:
    builder = tfds.builder(name, data_dir=data_dir)
  except tfds.core.registered.DatasetNotFoundError:
    close = difflib.get_close_matches(
      name.split(":")[0].split("/")[0], tfds.list_builders(with_community_datasets=False), 3
    )
    hint = f"; did you mean {', '.join(close)}?" if close else ""
    raise ConversionError(
      f"unknown TFDS dataset {name!r}: not a TFDS builder and not prepared under data_dir "
      f"{data_dir or '(TFDS default)'}{hint}"
    ) from None
  except (ValueError, ImportError) as e:
    raise ConversionError(f"TFDS dataset {name!r}: {e}") from None
  if not os.path.exists(os.path.join(os.fspath(builder.data_dir), "dataset_info.json")):
    raise ConversionError(
      f"TFDS dataset {name!r} is not prepared under {os.fspath(builder.data_dir)}; prepare "
      f'it first (needs network, and TensorFlow for most datasets): python -c "import '
      f"tensorflow_datasets as tfds; tfds.builder('{name}', data_dir='DIR', "
      f"file_format='array_record').download_and_prepare()\""
    )
  return builder


def _check_features(builder, name: str, keys: dict[str, str | None]):
  """Checks that the chosen features exist and that the label is a ClassLabel."""
  tfds = _tfds()
  features = builder.info.features
  available = sorted(features.keys())
  for role, key in keys.items():
    if key is not None and key not in features:
      raise ConversionError(f"TFDS dataset {name!r} has no feature {key!r} (the {role}); its features are {available}")
  label = features[keys["label key"]]
  if not isinstance(label, tfds.features.ClassLabel):
    raise ConversionError(
      f"TFDS dataset {name!r}: label key {keys['label key']!r} is a "
      f"{type(label).__name__}, not a ClassLabel; pick a ClassLabel feature with --y_key"
    )
  return list(label.names)


def load_split(
  builder,
  split: str,
  *,
  x_key: str = "image",
  y_key: str = "label",
  partition_key: str | None = None,
  log: Callable[[str], None] | None = None,
) -> SplitData:
  """Reads one split's ``x_key``, ``y_key`` (and ``partition_key``) into memory.

  Uses ``builder.as_data_source(split)`` when the dataset was prepared in a random-access
  format (no TensorFlow), else ``tfds.as_numpy(builder.as_dataset(split))`` (TensorFlow).

  Raises:
    ConversionError: naming the dataset and split for a missing feature, a non-ClassLabel
      label, an unknown split, inputs of varying shape, or a label outside the class list.
  """
  tfds = _tfds()
  name = builder.info.full_name
  label_names = _check_features(
    builder, name, {"input key": x_key, "label key": y_key, "partition feature": partition_key}
  )
  wanted = [k for k in (x_key, y_key, partition_key) if k is not None]
  where = f"TFDS {name} split {split!r}"
  random_access = set(tfds.core.file_adapters.FileFormat.with_random_access())
  if builder.info.available_file_formats() & random_access:
    try:
      source = builder.as_data_source(split)
    except (ValueError, KeyError) as e:
      raise ConversionError(f"{where}: {e}") from None
    total = len(source)
    batches = (
      _stack_rows(source.__getitems__(list(range(i, min(i + _CHUNK, total)))), wanted, where, i)
      for i in range(0, total, _CHUNK)
    )
  else:
    try:
      dataset = builder.as_dataset(split=split, shuffle_files=False, batch_size=_CHUNK)
    except ImportError as e:
      raise ConversionError(
        f"{where}: prepared as {builder.info.file_format.value}, which TFDS reads only with "
        f"TensorFlow ({e}); pip install tensorflow-cpu, or prepare the dataset with "
        "--file_format=array_record"
      ) from None
    except (ValueError, KeyError) as e:
      raise ConversionError(f"{where}: {e}") from None
    try:
      total = int(builder.info.splits[split].num_examples)
    except (ValueError, KeyError) as e:
      raise ConversionError(f"{where}: {e}") from None
    batches = ({k: np.asarray(b[k]) for k in wanted} for b in tfds.as_numpy(dataset))
  if total == 0:
    raise ConversionError(f"{where}: the split holds no examples")

  columns: dict[str, np.ndarray] = {}
  filled = 0
  for i, batch in enumerate(batches):
    m = len(batch[y_key])
    for k in wanted:
      arr = batch[k]
      if k not in columns:
        columns[k] = np.empty((total,) + arr.shape[1:], arr.dtype)
      elif arr.shape[1:] != columns[k].shape[1:]:
        raise ConversionError(
          f"{where}: feature {k!r} has per-example shape {arr.shape[1:]} near row {filled} "
          f"but {columns[k].shape[1:]} before; only fixed-shape features can be stored"
        )
      columns[k][filled : filled + m] = arr
    filled += m
    if log is not None and (i % 16 == 15 or filled >= total):
      log(f"{where}: read {filled}/{total} examples")
  if filled != total:
    raise ConversionError(f"{where}: read {filled} examples but the split has {total}")

  y = columns[y_key]
  bad = np.flatnonzero((y < 0) | (y >= len(label_names)))
  if bad.size:
    raise ConversionError(
      f"{where}: row {bad[0]} has label {int(y[bad[0]])}, outside the {len(label_names)} classes of {y_key!r}"
    )
  x = columns[x_key]
  if x.dtype == np.int64:
    x = x.astype(np.int32) if x.size == 0 or np.abs(x).max() < 2**31 else x
  elif x.dtype == np.float64:
    x = x.astype(np.float32)
  keys = None
  if partition_key is not None:
    keys = _as_str(columns[partition_key], where, partition_key)
  return SplitData(x=x, y=y.astype(np.int32), keys=keys, label_names=label_names)


def _stack_rows(rows: Sequence[dict[str, Any]], wanted: list[str], where: str, start: int) -> dict[str, np.ndarray]:
  out = {}
  for k in wanted:
    values = [r[k] for r in rows]
    try:
      out[k] = np.stack([np.asarray(v) for v in values])
    except ValueError:
      shapes = [np.shape(v) for v in values]
      row = next(i for i, s in enumerate(shapes) if s != shapes[0])
      raise ConversionError(
        f"{where}: feature {k!r} has per-example shape {shapes[row]} at row {start + row} "
        f"but {shapes[0]} at row {start}; only fixed-shape features can be stored"
      ) from None
  return out


def _as_str(values: np.ndarray, where: str, key: str) -> np.ndarray:
  if values.ndim != 1:
    raise ConversionError(
      f"{where}: partition feature {key!r} has per-example shape {values.shape[1:]}; a client name must be a scalar"
    )
  if values.dtype.kind in "SO":
    try:
      return np.array([v.decode("utf-8") if isinstance(v, bytes) else str(v) for v in values])
    except UnicodeDecodeError as e:
      raise ConversionError(f"{where}: partition feature {key!r} is not UTF-8 text: {e}") from None
  if values.dtype.kind in "iub":
    return values.astype(np.int64).astype(str)
  return values.astype(str)


# --------------------------------------------------------------------------------------------
# Partitions: each returns a list of row-index arrays, one per client, rows ascending.


def partition_by_feature(keys: np.ndarray) -> tuple[list[str], list[np.ndarray]]:
  """The natural partition: one client per distinct key, ids sorted.

  Returns:
    (client ids, per-client row indices in source order).
  """
  ids, inverse = np.unique(keys, return_inverse=True)
  order = np.argsort(inverse, kind="stable")
  bounds = np.cumsum(np.bincount(inverse, minlength=len(ids)))[:-1]
  return [str(i) for i in ids], np.split(order, bounds)


def _near_equal_sizes(total: int, num_clients: int) -> np.ndarray:
  sizes = np.full(num_clients, total // num_clients, np.int64)
  sizes[: total % num_clients] += 1
  return sizes


def partition_iid(num_examples: int, num_clients: int, rng: np.random.Generator) -> list[np.ndarray]:
  """A seeded shuffle cut into ``num_clients`` near-equal parts (sizes differ by at most 1)."""
  perm = rng.permutation(num_examples)
  parts = np.split(perm, np.cumsum(_near_equal_sizes(num_examples, num_clients))[:-1])
  return [np.sort(p) for p in parts]


def dirichlet_label_distributions(
  label_prior: np.ndarray, alpha: float, num_clients: int, rng: np.random.Generator
) -> np.ndarray:
  """Draws each client's label distribution ``q_k ~ Dir(alpha * p)`` (Hsu et al. 2019).

  Args:
    label_prior: ``[C]`` the global label frequencies ``p`` (non-negative, any scale).
    alpha: the concentration, > 0.
    num_clients: N.
    rng: a NumPy generator.

  Returns:
    ``[N, C]`` float64 rows summing to 1; zero where ``p`` is zero.
  """
  p = np.asarray(label_prior, np.float64)
  p = p / p.sum()
  support = p > 0
  q = np.zeros((num_clients, len(p)))
  q[:, support] = rng.dirichlet(alpha * p[support], size=num_clients)
  # Tiny alpha can underflow every component to 0; such a client takes one class.
  empty = q.sum(axis=1) == 0
  if np.any(empty):
    picks = rng.choice(np.flatnonzero(support), size=int(empty.sum()), p=p[support])
    q[np.flatnonzero(empty), picks] = 1.0
  return q / q.sum(axis=1, keepdims=True)


def partition_dirichlet(
  labels: np.ndarray, label_distributions: np.ndarray, rng: np.random.Generator
) -> list[np.ndarray]:
  """Draws near-equal-sized clients by label, without replacement (module docstring, step 3-5).

  Args:
    labels: ``[n]`` int labels in ``[0, C)``.
    label_distributions: ``[N, C]`` per-client ``q_k``.
    rng: a NumPy generator.

  Returns:
    N row-index arrays (ascending) partitioning ``range(n)``.
  """
  labels = np.asarray(labels)
  num_clients, num_classes = label_distributions.shape
  sizes = _near_equal_sizes(len(labels), num_clients)
  pools = [rng.permutation(np.flatnonzero(labels == c)) for c in range(num_classes)]
  left = np.array([len(pool) for pool in pools], np.int64)
  taken = np.zeros(num_classes, np.int64)
  parts = []
  for k in range(num_clients):
    counts = np.zeros(num_classes, np.int64)
    need = int(sizes[k])
    while need > 0:
      w = label_distributions[k] * (left > 0)
      if w.sum() <= 0:
        w = left.astype(np.float64)
      draw = np.minimum(rng.multinomial(need, w / w.sum()), left)
      counts += draw
      left -= draw
      need -= int(draw.sum())
    parts.append(np.sort(np.concatenate([pools[c][taken[c] : taken[c] + counts[c]] for c in range(num_classes)])))
    taken += counts
  return parts


# --------------------------------------------------------------------------------------------
# Conversion.


def convert_tfds(
  name: str,
  output_dir: str | os.PathLike,
  *,
  partition: str | Partition = "iid",
  num_clients: int | None = None,
  data_dir: str | None = None,
  train_split: str = "train",
  test_split: str | None = "test",
  x_key: str = "image",
  y_key: str = "label",
  seed: int = 0,
  overwrite: bool = False,
  log: Callable[[str], None] | None = None,
) -> dict[str, FederatedDataset]:
  """Converts a prepared TFDS dataset into ``output_dir/train`` and ``output_dir/test``.

  Args:
    name: the TFDS name, optionally with config and version (``'mnist'``, ``'emnist/byclass'``).
    output_dir: parent of the split directories.
    partition: ``'feature:NAME'``, ``'dirichlet:ALPHA'``, ``'iid'`` or a `Partition`.
    num_clients: N for ``dirichlet`` and ``iid``.
    data_dir: the TFDS data directory (None: TFDS's default).
    train_split, test_split: TFDS split names (slices like ``'train[:10%]'`` work);
      ``test_split=None`` or ``''`` converts train only.
    x_key, y_key: the input feature (stored as ``x``) and the ClassLabel (stored as ``y``).
    seed: fixes every random draw (shuffles, Dirichlet draws).
    overwrite: replace existing split directories.
    log: progress sink (e.g. ``print``); None is silent.

  Returns:
    ``{'train': FederatedDataset, 'test': ...}`` as written.

  Example::

    convert_tfds('mnist', '/data/mnist_iid', partition='iid', num_clients=100,
                 data_dir='~/tfds')

  Raises:
    ConversionError: for an unknown dataset, a missing feature, a non-ClassLabel label,
      alpha <= 0, more clients than examples, or an existing output without ``overwrite``.
  """
  if not isinstance(partition, Partition):
    partition = parse_partition(partition, num_clients)
  splits = {"train": train_split}
  if test_split:
    splits["test"] = test_split
  output_dir = os.fspath(output_dir)
  for split_name in splits:  # Refuse before any work, so nothing already written is lost.
    dest = os.path.join(output_dir, split_name)
    if os.path.exists(os.path.join(dest, "meta.json")) and not overwrite:
      raise ConversionError(f"{dest}: already holds a dataset; pass --overwrite to replace it")

  builder = open_builder(name, data_dir)
  full_name = builder.info.full_name
  data = {
    s: load_split(builder, source_split, x_key=x_key, y_key=y_key, partition_key=partition.feature, log=log)
    for s, source_split in splits.items()
  }
  for s, d in data.items():
    if partition.num_clients is not None and partition.num_clients > len(d.y):
      raise ConversionError(
        f"TFDS {full_name} split {splits[s]!r}: {partition.num_clients} clients but only "
        f"{len(d.y)} examples; every client needs at least one"
      )

  seeds = np.random.SeedSequence(seed).spawn(3)
  parts: dict[str, tuple[list[str], list[np.ndarray]]] = {}
  if partition.kind == "feature":
    for s, d in data.items():
      parts[s] = partition_by_feature(d.keys)
  else:
    width = len(str(partition.num_clients - 1))
    ids = [f"{k:0{width}d}" for k in range(partition.num_clients)]
    if partition.kind == "iid":
      for i, (s, d) in enumerate(data.items()):
        parts[s] = ids, partition_iid(len(d.y), partition.num_clients, np.random.default_rng(seeds[i]))
    else:
      num_classes = len(data["train"].label_names)
      prior = np.bincount(data["train"].y, minlength=num_classes)
      q = dirichlet_label_distributions(prior, partition.alpha, partition.num_clients, np.random.default_rng(seeds[2]))
      for i, (s, d) in enumerate(data.items()):
        parts[s] = ids, partition_dirichlet(d.y, q, np.random.default_rng(seeds[i]))

  provenance = {
    "source": "tensorflow-datasets",
    "converter": _CONVERTER,
    "dataset": full_name,
    "file_format": builder.info.file_format.value if builder.info.file_format else None,
    "x_key": x_key,
    "y_key": y_key,
    "partition": dataclasses.asdict(partition),
    "seed": seed,
  }
  written = {}
  for s, d in data.items():
    client_ids, rows = parts[s]
    order = np.concatenate(rows)
    sizes = np.array([len(r) for r in rows], np.int64)
    written[s] = write_dataset(
      os.path.join(output_dir, s),
      client_ids,
      {"x": d.x[order], "y": d.y[order]},
      sizes,
      label_names=d.label_names,
      provenance={**provenance, "split": splits[s]},
      overwrite=overwrite,
    )
    if log is not None:
      log(
        f"{s}: {len(client_ids)} clients, {len(order)} examples, "
        f"{len(np.unique(d.y))} classes (of {len(d.label_names)})"
      )
  return written


# --------------------------------------------------------------------------------------------
# Command line.

_DATASET = flags.DEFINE_string("dataset", None, "TFDS name, e.g. mnist or emnist/byclass.")
_DATA_DIR = flags.DEFINE_string("data_dir", None, "TFDS data directory holding the prepared dataset.")
_OUTPUT_DIR = flags.DEFINE_string("output_dir", None, "Writes OUTPUT_DIR/train and /test.")
_PARTITION = flags.DEFINE_string("partition", "iid", "feature:NAME, dirichlet:ALPHA or iid.")
_NUM_CLIENTS = flags.DEFINE_integer("num_clients", None, "N for dirichlet and iid.")
_TRAIN_SPLIT = flags.DEFINE_string("train_split", "train", "TFDS split for train.")
_TEST_SPLIT = flags.DEFINE_string("test_split", "test", "TFDS split for test ('' for none).")
_X_KEY = flags.DEFINE_string("x_key", "image", "Input feature, stored as x.")
_Y_KEY = flags.DEFINE_string("y_key", "label", "ClassLabel feature, stored as y.")
_SEED = flags.DEFINE_integer("seed", 0, "Seed for every shuffle and Dirichlet draw.")
_OVERWRITE = flags.DEFINE_bool("overwrite", False, "Replace existing output splits.")


def main(argv: Sequence[str]) -> None:
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {argv[1:]}")
  if not _DATASET.value or not _OUTPUT_DIR.value:
    raise app.UsageError("--dataset and --output_dir are required")
  try:
    convert_tfds(
      _DATASET.value,
      _OUTPUT_DIR.value,
      partition=_PARTITION.value,
      num_clients=_NUM_CLIENTS.value,
      data_dir=_DATA_DIR.value,
      train_split=_TRAIN_SPLIT.value,
      test_split=_TEST_SPLIT.value,
      x_key=_X_KEY.value,
      y_key=_Y_KEY.value,
      seed=_SEED.value,
      overwrite=_OVERWRITE.value,
      log=lambda m: print(m, file=sys.stderr, flush=True),
    )
  except (ConversionError, DatasetError) as e:
    print(f"error: {e}", file=sys.stderr)
    sys.exit(2)


if __name__ == "__main__":
  app.run(main)
