"""LEAF JSON conversion speed: examples/s for FEMNIST on a generated LEAF-format source.

Usage (from the repository root):

  python benchmarks/convert_leaf.py                      # 500 users x 200 = 100,000 examples
  python benchmarks/convert_leaf.py --users=50 --per_user=100   # a quick look

Writes LEAF's FEMNIST format (``train/*.json``, 100 users a file, ``json.dump`` as LEAF's
``split_data.py`` does) into a temporary directory: 784 floats k/255 per image with LEAF's white
background (about 80% of pixels 1.0, the rest ink), labels 0..61. Then times
`data_pipelines.leaf.convert_leaf` end to end (JSON parsing, validation, uint8 encoding and the
``.npy`` writes) and prints examples/s. The source is deleted afterwards.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import sys
import tempfile
import time

import numpy as np

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

from data_pipelines import leaf


def write_source(root: str, users: int, per_user: int, users_per_file: int, seed: int = 0) -> int:
  rng = np.random.default_rng(seed)
  split_dir = os.path.join(root, "train")
  os.makedirs(split_dir)
  nbytes = 0
  for f, start in enumerate(range(0, users, users_per_file)):
    names = [f"f{u:04d}_{u % 100:02d}" for u in range(start, min(start + users_per_file, users))]
    data = {}
    for name in names:
      ink = rng.random((per_user, 784)) < 0.2
      pixels = np.where(ink, rng.integers(0, 255, (per_user, 784)), 255) / 255.0
      data[name] = {"x": pixels.tolist(), "y": rng.integers(0, 62, per_user).tolist()}
    path = os.path.join(split_dir, f"all_data_{f}_niid_0_keep_0_train_9.json")
    with open(path, "w") as out:
      json.dump({"users": names, "num_samples": [per_user] * len(names), "user_data": data}, out)
    nbytes += os.path.getsize(path)
  return nbytes


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--users", type=int, default=500)
  parser.add_argument("--per_user", type=int, default=200)
  parser.add_argument("--users_per_file", type=int, default=100)
  parser.add_argument("--repeats", type=int, default=2)
  parser.add_argument("--num_workers", type=int, default=min(4, os.cpu_count() or 1))
  args = parser.parse_args()
  n = args.users * args.per_user
  tmp = tempfile.mkdtemp(prefix="convert_leaf_bench-")
  try:
    t0 = time.perf_counter()
    nbytes = write_source(os.path.join(tmp, "src"), args.users, args.per_user, args.users_per_file)
    print(
      f"source: {args.users:,} users x {args.per_user} = {n:,} examples, "
      f"{nbytes / 1e6:,.0f} MB of JSON in {-(-args.users // args.users_per_file)} files "
      f"(generated in {time.perf_counter() - t0:.1f} s)"
    )
    best = float("inf")
    for r in range(args.repeats):
      t0 = time.perf_counter()
      out = leaf.convert_leaf(
        os.path.join(tmp, "src"),
        os.path.join(tmp, "out"),
        "femnist",
        splits=["train"],
        num_workers=args.num_workers,
        overwrite=True,
        verbose=False,
      )
      dt = time.perf_counter() - t0
      assert out["train"].num_examples == n
      best = min(best, dt)
      print(
        f"repeat {r} ({args.num_workers} workers): {dt:.2f} s, {n / dt:,.0f} examples/s, {nbytes / 1e6 / dt:,.0f} MB/s"
      )
    print(
      f"| LEAF FEMNIST JSON -> layout | {n:,} | {best:.2f} s | **{n / best:,.0f}** "
      f"examples/s | {nbytes / 1e6 / best:,.0f} MB/s of JSON |"
    )
    print(
      f"machine: {platform.machine()}, {os.cpu_count()} cores, Python "
      f"{platform.python_version()}, NumPy {np.__version__}"
    )
  finally:
    shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
  main()
