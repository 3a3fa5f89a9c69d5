"""The experiment runner: ``train_and_evaluate(config, workdir)`` and its outputs.

Names are imported on first use, so that ``fedjaxscale.training.outputs`` and ``plots`` stay
cheap to import (no JAX) for tools that only read a run's files.
"""

import importlib

_EXPORTS = {
  "ConfigError": "fedjaxscale.training.validation",
  "build": "fedjaxscale.training.setup",
  "check_config": "fedjaxscale.training.validation",
  "get_base": "fedjaxscale.training.defaults",
  "holds_run": "fedjaxscale.training.loop",
  "train_and_evaluate": "fedjaxscale.training.loop",
}
__all__ = sorted(_EXPORTS)


def __getattr__(name):
  if name in _EXPORTS:
    return getattr(importlib.import_module(_EXPORTS[name]), name)
  raise AttributeError(f"module 'fedjaxscale.training' has no attribute {name!r}")
