"""Test-session setup: CPU only, four forced host devices, so every engine test shards for real."""

import os

# Must be set before JAX initialises its backends (i.e. before any test imports jax).
os.environ.setdefault("JAX_PLATFORMS", "cpu")
if "--xla_force_host_platform_device_count" not in os.environ.get("XLA_FLAGS", ""):
  os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") + " --xla_force_host_platform_device_count=4").strip()
