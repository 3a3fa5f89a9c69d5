"""JAX's persistent compilation cache for runs, and counters of what it saved.

A run compiles a handful of programs (its cohort shapes, evaluation, the server update). With the
persistent cache on, a second run of the same config (or any run that meets the same shapes)
loads them from disk instead of compiling: on this CPU that is most of a short run's wall time.

Where the cache lives, first match wins: ``config.engine.compilation_cache_dir``; the
``FEDJAXSCALE_COMPILATION_CACHE_DIR`` environment variable (the test suite points it at a
temporary directory); a directory the user already gave JAX (``JAX_COMPILATION_CACHE_DIR``);
``$XDG_CACHE_HOME/fedjaxscale/jax``; ``~/.cache/fedjaxscale/jax``.
``config.engine.compilation_cache = False`` turns it off.

JAX fixes the cache for the process at its first compilation, so ``enable`` must run before
anything compiles (``train_and_evaluate`` calls it first); a later call in the same process does
not move a cache already in use.
"""

import os
import pathlib
import threading

import jax

ENV_DIR = "FEDJAXSCALE_COMPILATION_CACHE_DIR"

_lock = threading.Lock()
_counts = {"requests": 0, "hits": 0}
_listening = False


def default_dir() -> pathlib.Path:
  """The cache directory when the config names none (see the module docstring)."""
  if os.environ.get(ENV_DIR):
    return pathlib.Path(os.environ[ENV_DIR]).expanduser()
  if jax.config.jax_compilation_cache_dir:
    return pathlib.Path(jax.config.jax_compilation_cache_dir).expanduser()
  base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
  return pathlib.Path(base) / "fedjaxscale" / "jax"


def _listen(event: str, **_) -> None:
  with _lock:
    if event == "/jax/compilation_cache/compile_requests_use_cache":
      _counts["requests"] += 1
    elif event == "/jax/compilation_cache/cache_hits":
      _counts["hits"] += 1


def enable(enabled: bool = True, cache_dir: str = "") -> dict:
  """Turns the persistent cache on (or off) for this process, caching even the smallest programs.

  Args:
    enabled: False turns the cache off (``jax_enable_compilation_cache``).
    cache_dir: the cache directory ('' for ``default_dir()``).

  Returns:
    ``{'enabled': bool, 'dir': str or None}``: what the process uses from now on.
  """
  global _listening
  with _lock:
    if not _listening:
      jax.monitoring.register_event_listener(_listen)
      _listening = True
  if not enabled:
    jax.config.update("jax_enable_compilation_cache", False)
    return {"enabled": False, "dir": None}
  path = pathlib.Path(cache_dir).expanduser() if cache_dir else default_dir()
  path.mkdir(parents=True, exist_ok=True)
  jax.config.update("jax_enable_compilation_cache", True)
  jax.config.update("jax_compilation_cache_dir", str(path))
  # Cache everything: the defaults (1 s of compile time; a file-system-sized minimum entry) skip
  # exactly the many small programs a federated run is made of.
  jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.0)
  jax.config.update("jax_persistent_cache_min_entry_size_bytes", -1)
  return {"enabled": True, "dir": str(path)}


def counts() -> dict[str, int]:
  """Compilations that went through the persistent cache so far in this process, and its hits."""
  with _lock:
    requests, hits = _counts["requests"], _counts["hits"]
  return {"cache_requests": requests, "cache_hits": hits, "cache_misses": requests - hits}
