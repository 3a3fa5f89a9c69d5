"""Checks an experiment config file before absl loads it, so that each problem is one message.

``ml_collections.config_flags`` loads ``--config=PATH[:VARIANT]`` while the flags are parsed and
lets a missing file, a syntax error, an exception in ``get_config`` or a ``get_config`` that
returns a plain dict surface as tracebacks (or later, as an attribute error). ``check`` does the
same load first and turns each into a ``ConfigFileError`` naming the file.
"""

import importlib.util
import pathlib
import traceback

import ml_collections


class ConfigFileError(ValueError):
  """A config file that cannot give a config; the message names the file."""


def config_spec(argv) -> str | None:
  """The value of ``--config`` in ``argv`` (``--config=V`` or ``--config V``), or None."""
  for i, arg in enumerate(argv):
    if arg.startswith("--config="):
      return arg.split("=", 1)[1]
    if arg == "--config" and i + 1 < len(argv):
      return argv[i + 1]
  return None


def load(spec: str) -> ml_collections.ConfigDict:
  """Loads ``PATH[:VARIANT]`` the way ``config_flags`` does; raises ``ConfigFileError``."""
  module, path_text, variant = _module(spec)
  config = _call(module, "get_config", path_text, variant)
  if not isinstance(config, ml_collections.ConfigDict):
    raise ConfigFileError(
      f"config file {path_text}: get_config() returned a {type(config).__name__}, expected an "
      "ml_collections.ConfigDict (start from fedjaxscale.training.get_base())"
    )
  return config


def load_sweep(spec: str) -> dict | None:
  """The file's ``get_sweep(variant)`` (a sweep section: ``{field: [values]}``), or None."""
  module, path_text, variant = _module(spec)
  if not callable(getattr(module, "get_sweep", None)):
    return None
  grid = _call(module, "get_sweep", path_text, variant)
  if not isinstance(grid, dict):
    raise ConfigFileError(f"config file {path_text}: get_sweep() returned a {type(grid).__name__}, expected a dict")
  return grid


def _module(spec: str):
  path_text, *variant = spec.split(":", 1)
  if not path_text:
    raise ConfigFileError("--config is empty; expected a Python file, e.g. experiments/configs/synthetic.py")
  path = pathlib.Path(path_text)
  if not path.exists():
    raise ConfigFileError(f"config file {path_text} does not exist")
  if not path.is_file():
    raise ConfigFileError(f"config file {path_text} is not a file")
  try:
    source = path.read_text(encoding="utf-8")
    code = compile(source, str(path), "exec")
  except SyntaxError as e:
    raise ConfigFileError(f"config file {path_text}:{e.lineno}: syntax error: {e.msg}") from None
  except (OSError, UnicodeDecodeError) as e:
    raise ConfigFileError(f"config file {path_text} cannot be read: {e}") from None
  module = importlib.util.module_from_spec(importlib.util.spec_from_loader("fedjaxscale_config_check", loader=None))
  module.__file__ = str(path)
  try:
    exec(code, module.__dict__)  # a config file is Python by design
  except Exception as e:
    raise ConfigFileError(f"config file {path_text} raised {_where(e, path)}") from None
  if not callable(getattr(module, "get_config", None)):
    raise ConfigFileError(f"config file {path_text} defines no get_config()")
  return module, path_text, variant


def _call(module, name, path_text, variant):
  try:
    return getattr(module, name)(*variant)
  except Exception as e:
    args = ", ".join(map(repr, variant))
    raise ConfigFileError(
      f"config file {path_text}: {name}({args}) raised {_where(e, pathlib.Path(path_text))}"
    ) from None


def _where(e: Exception, path: pathlib.Path) -> str:
  """``TypeName: message (line N)``, the line being the config file's deepest frame."""
  lines = [f.lineno for f in traceback.extract_tb(e.__traceback__) if pathlib.Path(f.filename) == path]
  at = f" (line {lines[-1]})" if lines else ""
  return f"{type(e).__name__}: {e}{at}"
