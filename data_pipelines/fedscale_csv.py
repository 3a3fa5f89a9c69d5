"""FedScale client maps (``client_data_mapping/*.csv`` + sample files) -> the dataset layout.

FedScale: "FedScale: Benchmarking Model and System Performance of Federated Learning at Scale",
Lai et al., ICML 2022 (arXiv:2105.11367), https://github.com/SymbioticLab/FedScale. A dataset
directory (``benchmark/dataset/data/<name>`` after its ``download.sh``) holds::

    client_data_mapping/train.csv     header client_id,sample_path,label_name,label_id
    client_data_mapping/test.csv
    train/<sample_path>  test/<sample_path>        (Google Speech: dataloaders/speech.py)
    <sample_path>                                  (FEMNIST: dataloaders/femnist.py joins the
                                                    root and the path directly)

``--layout=auto`` (the default) looks for each sample under ``<root>/<split>/`` first, then
under ``<root>/``. A client's rows need not be contiguous; clients are ordered by first
appearance in the CSV (as FedScale's ``DataPartitioner.trace_partition`` numbers them) and
keep their rows in CSV order.

Samples are decoded once, here:

- images (``--kind=image``): Pillow, converted to grayscale (``L``, ITU-R 601-2 luma) and,
  when their size differs, resized (bilinear, antialiased) to ``--image_size`` (28x28, as
  FedScale's FEMNIST models see them): x uint8 [H, W].
- audio (``--kind=audio``; Google Speech Commands, 16 kHz mono WAV): the stdlib ``wave``
  module, 8/16/32-bit PCM scaled to [-1, 1), zero-padded or trimmed to ``--clip_seconds``,
  then `log_mel` (25 ms Hann windows every 10 ms, 40 mel bands): x float32 [frames, 40].

y is int32 ``label_id``; label names come from the ``label_name`` column, ordered by id (or
from ``--label_names``); every id must name one class and every class one id.

FedScale's benchmark configs drop clients with fewer than 21 samples (``filter_less``);
``--min_samples=21`` does the same, on the splits in ``--min_samples_splits`` (train), and
reports how many were dropped.

Command::

    python -m data_pipelines.fedscale_csv --root=benchmark/dataset/data/femnist \\
        --output_dir=datasets/fedscale_femnist --min_samples=21
"""

from __future__ import annotations

import csv
import os
import wave
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

import numpy as np
from absl import app, flags

from data_pipelines import _splits_io
from data_pipelines.errors import ConversionError
from fedjaxscale.data.dataset import FederatedDataset, write_dataset

__all__ = [
  "ClientMap",
  "convert_fedscale",
  "decode_image",
  "decode_wav",
  "log_mel",
  "mel_filterbank",
  "read_client_map",
]

COLUMNS = ("client_id", "sample_path", "label_name", "label_id")
AUDIO_EXTENSIONS = (".wav",)


# --------------------------------------------------------------------------------------------
# The client map.


@dataclass(frozen=True)
class ClientMap:
  """One ``client_data_mapping`` CSV, column-wise; ``lines`` are 1-based file line numbers."""

  file: str
  client_ids: list[str]
  sample_paths: list[str]
  label_names: list[str]
  label_ids: np.ndarray  # int64
  lines: np.ndarray  # int64

  def where(self, row: int) -> str:
    return f"{self.file} line {int(self.lines[row])}"


def read_client_map(file: str) -> ClientMap:
  """Reads a FedScale ``client_data_mapping`` CSV.

  Raises:
    ConversionError: naming the file (and line) for a missing file, a header without the
      four columns, a short row, an empty client id or path, or a non-integer label_id.
  """
  if not os.path.isfile(file):
    raise ConversionError(f"{file}: missing (expected FedScale's client_data_mapping CSV)")
  ids, paths, names, labels, lines = [], [], [], [], []
  try:
    with open(file, newline="", encoding="utf-8") as f:
      reader = csv.reader(f)
      header = next(reader, None)
      if header is None:
        raise ConversionError(f"{file}: empty (expected a header {','.join(COLUMNS)})")
      header = [h.strip() for h in header]
      missing = [c for c in COLUMNS if c not in header]
      if missing:
        raise ConversionError(
          f"{file}: header {header} lacks column(s) {missing}; FedScale client maps have {','.join(COLUMNS)}"
        )
      cols = [header.index(c) for c in COLUMNS]
      width = max(cols) + 1
      for row in reader:
        if not row:
          continue
        if len(row) < width:
          raise ConversionError(
            f"{file} line {reader.line_num}: {len(row)} fields; expected {len(header)} ({','.join(header)})"
          )
        cid, path, name, label = (row[c].strip() for c in cols)
        if not cid or not path:
          raise ConversionError(f"{file} line {reader.line_num}: empty client_id or sample_path")
        try:
          label = int(label)
        except ValueError:
          raise ConversionError(f"{file} line {reader.line_num}: label_id {label!r} is not an integer") from None
        ids.append(cid)
        paths.append(path)
        names.append(name)
        labels.append(label)
        lines.append(reader.line_num)
  except (UnicodeDecodeError, csv.Error) as e:
    raise ConversionError(f"{file}: not a readable CSV ({e})") from None
  if not ids:
    raise ConversionError(f"{file}: holds a header but no rows")
  return ClientMap(file, ids, paths, names, np.asarray(labels, np.int64), np.asarray(lines, np.int64))


def _label_names(maps: Sequence[ClientMap], given: Sequence[str] | None) -> list[str]:
  """The class list: ``given``, or the CSVs' label_name by label_id; checks every row."""
  if given is not None:
    names = list(given)
    for m in maps:
      bad = np.flatnonzero((m.label_ids < 0) | (m.label_ids >= len(names)))
      if bad.size:
        r = int(bad[0])
        raise ConversionError(f"{m.where(r)}: label_id {int(m.label_ids[r])} is outside the {len(names)} classes")
      for r in range(len(m.label_ids)):
        if m.label_names[r] != names[m.label_ids[r]]:
          raise ConversionError(
            f"{m.where(r)}: label_name {m.label_names[r]!r} but class "
            f"{int(m.label_ids[r])} is {names[m.label_ids[r]]!r}"
          )
    return names
  by_id: dict[int, tuple[str, str]] = {}
  by_name: dict[str, tuple[int, str]] = {}
  for m in maps:
    for r in range(len(m.label_ids)):
      label, name = int(m.label_ids[r]), m.label_names[r]
      if label < 0:
        raise ConversionError(f"{m.where(r)}: label_id {label} is negative")
      first = by_id.setdefault(label, (name, m.where(r)))
      if first[0] != name:
        raise ConversionError(f"{m.where(r)}: label_id {label} is named {name!r}, but {first[1]} names it {first[0]!r}")
      first = by_name.setdefault(name, (label, m.where(r)))
      if first[0] != label:
        raise ConversionError(
          f"{m.where(r)}: label_name {name!r} has label_id {label}, but {first[1]} gives it {first[0]}"
        )
  gaps = sorted(set(range(max(by_id) + 1)) - set(by_id))
  if gaps:
    raise ConversionError(
      f"{', '.join(m.file for m in maps)}: no row has label_id {gaps[0]} (ids run to "
      f"{max(by_id)}), so its class has no name; pass the class list (--label_names)"
    )
  return [by_id[i][0] for i in range(len(by_id))]


def _resolve(root: str, split: str, path: str, layout: str) -> str | None:
  candidates = {
    "split": (os.path.join(root, split, path),),
    "root": (os.path.join(root, path),),
    "auto": (os.path.join(root, split, path), os.path.join(root, path)),
  }[layout]
  return next((c for c in candidates if os.path.isfile(c)), None)


# --------------------------------------------------------------------------------------------
# Decoding.


def decode_image(path: str, size: tuple[int, int]) -> np.ndarray:
  """An image file -> uint8 [height, width] grayscale, resized (bilinear) when needed."""
  from PIL import Image  # Pillow is only needed for image sources.

  with Image.open(path) as img:
    img = img.convert("L")
    if img.size != (size[1], size[0]):
      img = img.resize((size[1], size[0]), Image.Resampling.BILINEAR)
    return np.asarray(img, dtype=np.uint8)


def decode_wav(path: str, sample_rate: int, num_samples: int) -> np.ndarray:
  """A mono PCM WAV -> float32 [num_samples] in [-1, 1), zero-padded or trimmed at the end."""
  with wave.open(path, "rb") as w:
    channels, width, rate = w.getnchannels(), w.getsampwidth(), w.getframerate()
    if channels != 1:
      raise ValueError(f"{channels} channels; expected mono")
    if rate != sample_rate:
      raise ValueError(f"sample rate {rate} Hz; expected {sample_rate} Hz (no resampling here)")
    raw = w.readframes(min(w.getnframes(), num_samples))
  if width == 1:  # 8-bit WAV is unsigned.
    audio = (np.frombuffer(raw, np.uint8).astype(np.float32) - 128.0) / 128.0
  elif width == 2:
    audio = np.frombuffer(raw, "<i2").astype(np.float32) / 32768.0
  elif width == 4:
    audio = np.frombuffer(raw, "<i4").astype(np.float32) / 2147483648.0
  else:
    raise ValueError(f"{8 * width}-bit samples; expected 8, 16 or 32-bit PCM")
  out = np.zeros(num_samples, np.float32)
  out[: len(audio)] = audio[:num_samples]
  return out


def mel_filterbank(
  num_mels: int, n_fft: int, sample_rate: int, fmin: float = 0.0, fmax: float | None = None
) -> np.ndarray:
  """Triangular mel filters, [num_mels, n_fft // 2 + 1] (HTK mel scale, peak 1, no area norm).

  mel(f) = 2595 log10(1 + f / 700). Centres f_0 < f_1 < ... < f_{M+1} are equally spaced on
  the mel scale from mel(fmin) to mel(fmax) (default sample_rate / 2). Filter m = 1..M
  weighs the FFT bin at frequency f_k = k * sample_rate / n_fft by::

      w_m(f_k) = max(0, min((f_k - f_{m-1}) / (f_m - f_{m-1}),
                            (f_{m+1} - f_k) / (f_{m+1} - f_m)))
  """
  fmax = sample_rate / 2 if fmax is None else fmax
  mel = lambda f: 2595.0 * np.log10(1.0 + f / 700.0)
  centres = 700.0 * (10 ** (np.linspace(mel(fmin), mel(fmax), num_mels + 2) / 2595.0) - 1.0)
  bins = np.arange(n_fft // 2 + 1) * sample_rate / n_fft
  lo, mid, hi = centres[:-2, None], centres[1:-1, None], centres[2:, None]
  rising = (bins[None] - lo) / (mid - lo)
  falling = (hi - bins[None]) / (hi - mid)
  return np.maximum(0.0, np.minimum(rising, falling)).astype(np.float32)


def log_mel(
  audio: np.ndarray,
  sample_rate: int = 16_000,
  *,
  num_mels: int = 40,
  window_ms: float = 25.0,
  hop_ms: float = 10.0,
  eps: float = 1e-6,
) -> np.ndarray:
  """Log-mel features of a batch of clips, vectorised: [n, samples] -> float32 [n, frames, mels].

  Frames of ``window_ms`` every ``hop_ms`` (no centre padding: frames = 1 + (samples - win) //
  hop, 98 for 1 s at 16 kHz), a periodic Hann window, a real FFT of the next power of two
  >= the window (512 at 16 kHz), the power spectrum |X|^2, `mel_filterbank`, then
  log(mel + eps).
  """
  audio = np.asarray(audio, np.float32)
  win = int(round(sample_rate * window_ms / 1000))
  hop = int(round(sample_rate * hop_ms / 1000))
  if audio.shape[-1] < win:
    raise ValueError(f"clips of {audio.shape[-1]} samples are shorter than one window ({win})")
  n_fft = 1 << (win - 1).bit_length()
  frames = np.lib.stride_tricks.sliding_window_view(audio, win, axis=-1)[..., ::hop, :]
  hann = (0.5 - 0.5 * np.cos(2 * np.pi * np.arange(win) / win)).astype(np.float32)
  power = np.abs(np.fft.rfft(frames * hann, n=n_fft, axis=-1)) ** 2
  mel = power.astype(np.float32) @ mel_filterbank(num_mels, n_fft, sample_rate).T
  return np.log(mel + eps).astype(np.float32)


# --------------------------------------------------------------------------------------------
# Conversion.


def convert_fedscale(
  root: str,
  output_dir: str,
  *,
  splits: Sequence[str] = ("train", "test"),
  kind: str = "auto",
  layout: str = "auto",
  image_size: tuple[int, int] = (28, 28),
  sample_rate: int = 16_000,
  clip_seconds: float = 1.0,
  num_mels: int = 40,
  window_ms: float = 25.0,
  hop_ms: float = 10.0,
  min_samples: int = 0,
  min_samples_splits: Sequence[str] = ("train",),
  label_names: Sequence[str] | None = None,
  num_threads: int = 4,
  overwrite: bool = False,
  verbose: bool = True,
) -> dict[str, FederatedDataset]:
  """Converts ``<root>/client_data_mapping/<split>.csv`` and its samples, one split each.

  Args:
    root: the FedScale dataset directory (holding ``client_data_mapping/``).
    output_dir: receives one dataset directory per split.
    splits: CSVs to convert (``<split>.csv``); each must exist.
    kind: 'image', 'audio', or 'auto' (audio when the first sample path ends in .wav).
    layout: where sample paths are relative to: 'split' (``<root>/<split>/``, Speech),
      'root' (``<root>/``, FEMNIST) or 'auto' (split first, then root, per row).
    image_size: (height, width) images are resized to.
    sample_rate, clip_seconds, num_mels, window_ms, hop_ms: audio features (`log_mel`).
    min_samples: clients with fewer rows are dropped (FedScale's filter_less; 0 keeps all),
      on the splits in ``min_samples_splits`` only. Their files are never opened.
    label_names: the class list; by default the CSVs' label_name column ordered by label_id.
    num_threads: threads decoding samples (Pillow and file reads release the GIL).
    overwrite: replace existing split directories.
    verbose: print progress to stderr.

  Returns:
    ``{split: FederatedDataset}``; each split's ``meta['provenance']['clients_filtered']``
    counts the clients ``min_samples`` dropped.

  Raises:
    ConversionError: naming the CSV and line for a missing sample file, an undecodable
      sample, a label outside the class list or inconsistent label name/id pairs; existing
      outputs without ``overwrite`` (checked before anything is written).

  Example::

    convert_fedscale('data/google_speech', 'datasets/speech', min_samples=21)
  """
  if kind not in ("auto", "image", "audio") or layout not in ("auto", "split", "root"):
    raise ConversionError(f"kind must be auto/image/audio and layout auto/split/root; got {kind!r}, {layout!r}")
  if not splits:
    raise ConversionError("no splits given")
  _splits_io.check_outputs(output_dir, splits, overwrite)
  maps = [read_client_map(os.path.join(root, "client_data_mapping", f"{s}.csv")) for s in splits]
  names = _label_names(maps, label_names)
  if kind == "auto":
    kind = "audio" if maps[0].sample_paths[0].lower().endswith(AUDIO_EXTENSIONS) else "image"
  num_samples = int(round(sample_rate * clip_seconds))
  if kind == "audio":
    example_shape = log_mel(
      np.zeros((1, num_samples), np.float32), sample_rate, num_mels=num_mels, window_ms=window_ms, hop_ms=hop_ms
    ).shape[1:]
    dtype = np.float32
  else:
    example_shape, dtype = tuple(image_size), np.uint8
  progress = _splits_io.Progress("fedscale", enabled=verbose)
  params = dict(kind=kind, layout=layout, min_samples=min_samples, min_samples_splits=list(min_samples_splits))
  params.update(
    dict(image_size=list(image_size), grayscale="PIL L", resample="bilinear")
    if kind == "image"
    else dict(
      sample_rate=sample_rate,
      clip_seconds=clip_seconds,
      num_mels=num_mels,
      window_ms=window_ms,
      hop_ms=hop_ms,
      window="hann (periodic)",
      mel_scale="HTK",
      features="log(mel power + 1e-6)",
    )
  )

  # Group rows by client (first appearance order, rows in CSV order) and filter, for all
  # splits before decoding anything, so a missing file fails fast.
  plans = []
  for split, m in zip(splits, maps):
    ids = np.asarray(m.client_ids)
    uniq, first, inverse, counts = np.unique(ids, return_index=True, return_inverse=True, return_counts=True)
    order = np.argsort(first, kind="stable")  # client positions by first appearance
    rank = np.empty_like(order)
    rank[order] = np.arange(len(order))
    rows = np.argsort(rank[inverse], kind="stable")  # rows grouped by client, CSV order kept
    client_ids, sizes = uniq[order], counts[order]
    keep = sizes >= min_samples if split in min_samples_splits else np.ones(len(sizes), bool)
    filtered = int((~keep).sum())
    rows = rows[np.repeat(keep, sizes)]
    client_ids, sizes = client_ids[keep], sizes[keep]
    if not len(client_ids):
      raise ConversionError(f"{m.file}: every client has fewer than {min_samples} samples")
    files = []
    for r in rows:
      path = _resolve(root, split, m.sample_paths[r], layout)
      if path is None:
        tried = {"split": os.path.join(root, split, m.sample_paths[r]), "root": os.path.join(root, m.sample_paths[r])}
        shown = " or ".join(tried[k] for k in (("split", "root") if layout == "auto" else (layout,)))
        raise ConversionError(f"{m.where(r)}: sample file {shown} is missing")
      files.append(path)
    plans.append((split, m, rows, client_ids, sizes, files, filtered))
    progress.update(
      f"{split}: {len(rows):,} samples of {len(client_ids):,} clients to decode"
      f" ({filtered:,} clients under {min_samples} samples dropped)",
      force=True,
    )

  out = {}
  with ThreadPoolExecutor(max(1, num_threads)) as pool:
    for split, m, rows, client_ids, sizes, files, filtered in plans:
      x = np.empty((len(rows), *example_shape), dtype)
      if kind == "image":
        decode = lambda i, files=files: decode_image(files[i], image_size)
      else:
        decode = lambda i, files=files: decode_wav(files[i], sample_rate, num_samples)

      def checked(i, decode=decode, m=m, rows=rows, files=files):
        try:
          return decode(i)
        except Exception as e:  # Pillow and wave raise many types for a bad file.
          raise ConversionError(f"{m.where(rows[i])}: cannot decode {files[i]} ({type(e).__name__}: {e})") from None

      start = 0
      for c, n in enumerate(sizes):
        block = list(pool.map(checked, range(start, start + n)))
        if kind == "image":
          x[start : start + n] = block
        else:
          x[start : start + n] = log_mel(
            np.stack(block), sample_rate, num_mels=num_mels, window_ms=window_ms, hop_ms=hop_ms
          )
        start += n
        progress.update(f"{split}: {c + 1:,}/{len(sizes):,} clients, {start:,} samples")
      y = m.label_ids[rows].astype(np.int32)
      out[split] = write_dataset(
        os.path.join(output_dir, split),
        client_ids,
        {"x": x, "y": y},
        sizes,
        label_names=names,
        overwrite=overwrite,
        provenance=dict(
          source="FedScale client_data_mapping (github.com/SymbioticLab/FedScale)",
          converter="data_pipelines.fedscale_csv",
          root=root,
          csv=os.path.relpath(m.file, root),
          split=split,
          clients_filtered=filtered,
          **params,
        ),
      )
      del x
      line = _splits_io.summary_line(split, out[split], len(names))
      if split in min_samples_splits and min_samples > 0:
        line += f" ({filtered:,} clients under {min_samples} samples filtered)"
      print(line, flush=True)
  return out


# --------------------------------------------------------------------------------------------
# Command line.


def define_flags() -> None:
  """Defines the CLI flags. Called only when run as a program: absl flags are process-global,
  and several converters defining ``--output_dir`` in one process (a test run) would clash."""
  flags.DEFINE_string("root", None, "FedScale dataset directory (holding client_data_mapping/).")
  flags.DEFINE_string("output_dir", None, "Receives one directory per split.")
  flags.DEFINE_list("splits", ["train", "test"], "client_data_mapping/<split>.csv to convert.")
  flags.DEFINE_enum("kind", "auto", ["auto", "image", "audio"], "Sample type (auto: audio for .wav paths).")
  flags.DEFINE_enum(
    "layout",
    "auto",
    ["auto", "split", "root"],
    "Sample paths are relative to <root>/<split>/ (split), <root>/ (root), or whichever holds the file.",
  )
  flags.DEFINE_list("image_size", ["28", "28"], "Images: height,width after resizing.")
  flags.DEFINE_integer("sample_rate", 16_000, "Audio: expected sample rate (Hz).")
  flags.DEFINE_float("clip_seconds", 1.0, "Audio: clips are zero-padded or trimmed to this.")
  flags.DEFINE_integer("num_mels", 40, "Audio: mel bands.")
  flags.DEFINE_float("window_ms", 25.0, "Audio: STFT window (Hann).")
  flags.DEFINE_float("hop_ms", 10.0, "Audio: STFT hop.")
  flags.DEFINE_integer("min_samples", 0, "Drop clients with fewer samples (FedScale configs: 21); 0 keeps all.")
  flags.DEFINE_list("min_samples_splits", ["train"], "Splits --min_samples applies to.")
  flags.DEFINE_string(
    "label_names",
    None,
    "Optional file with the class list, one name a line, line i = label_id i (default: from the CSVs).",
  )
  flags.DEFINE_integer("num_threads", 4, "Threads decoding samples.")
  flags.DEFINE_boolean("overwrite", False, "Replace existing split directories.")
  flags.mark_flags_as_required(["root", "output_dir"])


def _cli() -> Any:
  f = flags.FLAGS
  try:
    size = tuple(int(v) for v in f.image_size)
  except ValueError:
    size = ()
  if len(size) != 2 or min(size) < 1:
    raise app.UsageError(f"--image_size must be two positive ints, got {f.image_size}")
  names = None
  if f.label_names:
    try:
      with open(f.label_names, encoding="utf-8") as fh:
        names = [line.rstrip("\n") for line in fh if line.strip()]
    except OSError as e:
      raise ConversionError(f"{f.label_names}: unreadable ({e})") from None
  return convert_fedscale(
    f.root,
    f.output_dir,
    splits=f.splits,
    kind=f.kind,
    layout=f.layout,
    image_size=size,
    sample_rate=f.sample_rate,
    clip_seconds=f.clip_seconds,
    num_mels=f.num_mels,
    window_ms=f.window_ms,
    hop_ms=f.hop_ms,
    min_samples=f.min_samples,
    min_samples_splits=f.min_samples_splits,
    label_names=names,
    num_threads=f.num_threads,
    overwrite=f.overwrite,
  )


def main(argv: Sequence[str]) -> None:
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {argv[1:]}")
  _splits_io.run_main(_cli)


if __name__ == "__main__":
  define_flags()
  app.run(main)
