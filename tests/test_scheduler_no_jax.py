"""The host half never imports JAX (directly or transitively)."""

import os
import subprocess
import sys

import pytest

_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.mark.parametrize("module", ["fedjaxscale.systems", "fedjaxscale.scheduler"])
def test_importing_does_not_import_jax(module):
  code = (
    f"import sys, {module}\n"
    "bad = sorted(m for m in sys.modules if m.split('.')[0] in "
    "('jax', 'jaxlib', 'flax', 'optax'))\n"
    "assert not bad, bad\n"
  )
  env = dict(os.environ, PYTHONPATH=_ROOT + os.pathsep + os.environ.get("PYTHONPATH", ""))
  result = subprocess.run([sys.executable, "-c", code], cwd=_ROOT, env=env, capture_output=True, text=True, timeout=120)
  assert result.returncode == 0, result.stderr
