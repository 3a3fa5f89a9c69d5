"""The accelerator benchmark keeps working: ``benchmarks/gpu.py --tiny`` runs on the CPU and writes its tables."""

import os
import pathlib
import re
import subprocess
import sys

ROOT = pathlib.Path(__file__).resolve().parents[1]


def test_gpu_benchmark_tiny_writes_every_table(tmp_path):
  out = tmp_path / "gpu.md"
  env = dict(os.environ, JAX_PLATFORMS="cpu", PYTHONPATH=str(ROOT))
  env["XLA_FLAGS"] = ""  # one CPU device, as a plain run has
  done = subprocess.run(
    [sys.executable, str(ROOT / "benchmarks" / "gpu.py"), "--tiny", f"--out={out}"],
    env=env,
    cwd=tmp_path,
    capture_output=True,
    text=True,
    timeout=900,
  )
  assert done.returncode == 0, done.stderr[-3000:]
  text = out.read_text()
  for heading in ("## Matmul", "## Engine", "## FedScale FEMNIST round", "## pfl's CIFAR-10 benchmark shape"):
    assert heading in text
  assert re.search(r"float32 \*\*[0-9.]+ TFLOP/s\*\*, bfloat16 \*\*[0-9.]+ TFLOP/s\*\*", text)
  # One row per cohort size of each engine table, with a finite API / hand ratio.
  assert (
    len(re.findall(r"^\| [0-9,]+ \| [0-9,]+ \| [0-9,]+ \[\d+\] \| [0-9,]+ \[\d+\] \| \*\*[0-9.]+\*\* \|", text, re.M))
    == 3
  )
  assert re.search(r"^\| 2 \| [0-9.]+ \| \*\*[0-9.]+\*\* \| 2 \| [1-4] \|$", text, re.M)  # K = 2, a few programs
