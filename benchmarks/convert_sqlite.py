"""Conversion speed of the FedJAX / TFF SQLite converter (`data_pipelines.sqlite`).

Usage (from the repository root):

  python benchmarks/convert_sqlite.py                    # 100k EMNIST-like examples, both formats
  python benchmarks/convert_sqlite.py --examples=340000  # about the size of FedJAX's EMNIST train

Generates an EMNIST-like source (~3,400 writers' worth of clients at full size: 28x28 float32
pixels k/255, 80% 1.0 background, labels in [0, 62)) in FedJAX's format (one
zlib+msgpack row per client) and in TFF's (one ``tf.train.Example`` per row), converts each into
the dataset layout and prints examples/s as a Markdown table. Generation is not timed; the
conversion is, end to end (SQLite reads, decoding, preprocessing, spooling, writing ``.npy``).
"""

from __future__ import annotations

import argparse
import os
import platform
import shutil
import sys
import tempfile
import time

import numpy as np

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

from data_pipelines import sqlite as conv


def emnist_like_clients(num_examples: int, seed: int = 0):
  """Yields (client id, {pixels, label}) with ~100 examples per client, like EMNIST writers."""
  rng = np.random.default_rng(seed)
  done, i = 0, 0
  while done < num_examples:
    n = int(min(num_examples - done, rng.integers(50, 150)))
    pixels = np.ones((n, 28, 28), np.float32)
    stroke = rng.random((n, 28, 28)) < 0.2
    # Real EMNIST pixels are 8-bit grey levels k / 255 stored as float32.
    pixels[stroke] = rng.integers(0, 255, int(stroke.sum())).astype(np.float32) / 255
    yield (
      f"{i:016x}:f{i % 4000:04d}_{i % 100:02d}",
      {"pixels": pixels, "label": rng.integers(0, 62, n).astype(np.int32)},
    )
    done += n
    i += 1


def write_sources(tmp: str, num_examples: int) -> dict[str, str]:
  fedjax = os.path.join(tmp, "emnist_fedjax.sqlite")
  conv.write_fedjax_sqlite(fedjax, emnist_like_clients(num_examples))
  tff = os.path.join(tmp, "emnist_tff.sqlite")
  conv.write_tff_sqlite(
    tff,
    {
      "train": [
        (cid, [{"pixels": p, "label": np.int64(y)} for p, y in zip(ex["pixels"], ex["label"])])
        for cid, ex in emnist_like_clients(num_examples)
      ]
    },
  )
  return {"fedjax": fedjax, "tff": tff}


def main() -> None:
  parser = argparse.ArgumentParser()
  parser.add_argument("--examples", type=int, default=100_000)
  parser.add_argument("--repeats", type=int, default=2)
  args = parser.parse_args()
  tmp = tempfile.mkdtemp(prefix="bench-sqlite-")
  try:
    t0 = time.perf_counter()
    sources = write_sources(tmp, args.examples)
    print(f"generated {args.examples:,} examples in both formats in {time.perf_counter() - t0:.1f} s", file=sys.stderr)
    rows = []
    for fmt, path in sources.items():
      best = float("inf")
      for r in range(args.repeats):
        out = os.path.join(tmp, f"out-{fmt}-{r}")
        t0 = time.perf_counter()
        result = conv.convert_sqlite(fmt, "emnist", path, out, progress=False)
        best = min(best, time.perf_counter() - t0)
        assert result["train"].num_examples == args.examples
        shutil.rmtree(out)
      size_mb = os.path.getsize(path) / 2**20
      rows.append((fmt, result["train"].num_clients, size_mb, best))
    print(
      f"\nMachine: {platform.machine()}, {os.cpu_count()} cores, Python "
      f"{platform.python_version()}, NumPy {np.__version__}; best of {args.repeats}.\n"
    )
    print("| source format | clients | examples | SQLite file | conversion | examples/s |")
    print("| --- | ---: | ---: | ---: | ---: | ---: |")
    for fmt, clients, size_mb, secs in rows:
      print(
        f"| {fmt} (EMNIST-like) | {clients:,} | {args.examples:,} | {size_mb:.0f} MB | "
        f"{secs:.2f} s | {args.examples / secs:,.0f} |"
      )
  finally:
    shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
  main()
