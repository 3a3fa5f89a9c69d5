"""Test-session setup: CPU only, four forced host devices (so every engine test shards for real), and
a temporary persistent compilation cache."""

import os

# Must be set before JAX initialises its backends (i.e. before any test imports jax).
os.environ.setdefault("JAX_PLATFORMS", "cpu")
if "--xla_force_host_platform_device_count" not in os.environ.get("XLA_FLAGS", ""):
  os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") + " --xla_force_host_platform_device_count=4").strip()

# Runs compile into JAX's persistent cache; the suite's go to a directory of its own, never the
# user's cache (tests that check the cache give their subprocesses one each).
if not os.environ.get("FEDJAXSCALE_COMPILATION_CACHE_DIR"):
  import atexit
  import shutil
  import tempfile

  _cache_dir = tempfile.mkdtemp(prefix="fedjaxscale-test-cache-")
  os.environ["FEDJAXSCALE_COMPILATION_CACHE_DIR"] = _cache_dir
  atexit.register(shutil.rmtree, _cache_dir, ignore_errors=True)
