"""Config validation: every field of `defaults.get_base` checked for its type and range.

``check_config(config)`` raises one ``ConfigError`` naming the field for a value that needs no
data to be refused; `setup` checks the rest (data, traces, model against labels) while building
the run. The CLI turns a ``ConfigError`` into exit code 2, before anything is written.
"""

import inspect
import os
import pathlib
import re

import numpy as np

from fedjaxscale.data.synthetic import synthetic_client_sizes
from fedjaxscale.training import client_states
from fedjaxscale.training import privacy as privacy_lib

REPO_ROOT = pathlib.Path(__file__).resolve().parents[2]
ALGORITHMS = ("fedavg", "fedprox", "fedyogi", "fedadam", "fedadagrad", "scaffold", "ditto")
MODELS = (
  "logistic_regression",
  "mlp",
  "femnist_cnn",
  "resnet18_gn",
  "speech_cnn",
  "shakespeare_lstm",
  "shakespeare_seq_lstm",
  "stackoverflow_lstm",
)
SYNTHETIC_MIN_SIZE = inspect.signature(synthetic_client_sizes).parameters["min_size"].default
SEQUENCE_MODELS = ("shakespeare_lstm", "shakespeare_seq_lstm", "stackoverflow_lstm")


class ConfigError(ValueError):
  """A config that cannot run; the message names the field."""


def _require(ok: bool, field: str, message: str):
  if not ok:
    raise ConfigError(f"config.{field}: {message}")


def resolve_path(path: str) -> pathlib.Path:
  """An absolute path; a relative one is looked up from the working directory, then the repository."""
  p = pathlib.Path(os.path.expanduser(path))
  if p.is_absolute() or p.exists():
    return p.resolve()
  candidate = REPO_ROOT / p
  return candidate if candidate.exists() else p.resolve()


def _unknown_fields(config, base, prefix=""):
  for key in config.keys():
    if key not in base:
      yield prefix + key
    elif hasattr(config[key], "keys") and hasattr(base[key], "keys"):
      yield from _unknown_fields(config[key], base[key], f"{prefix}{key}.")


def _missing_fields(config, base, prefix=""):
  for key in base.keys():
    if key not in config:
      yield prefix + key
    elif hasattr(base[key], "keys"):
      if not hasattr(config[key], "keys"):
        yield prefix + key
      else:
        yield from _missing_fields(config[key], base[key], f"{prefix}{key}.")


def _get(config, field: str):
  value = config
  for part in field.split("."):
    value = value[part]
  return value


def _is_int(v) -> bool:
  return isinstance(v, (int, np.integer)) and not isinstance(v, (bool, np.bool_))


def _is_real(v) -> bool:
  return isinstance(v, (int, float, np.integer, np.floating)) and not isinstance(v, (bool, np.bool_))


def _int(config, field: str, low: int, high: int | None = None, note: str = ""):
  v = _get(config, field)
  _require(_is_int(v), field, f"must be an int, got {v!r} ({type(v).__name__})")
  hint = f" {note}" if note else ""
  _require(v >= low, field, f"must be >= {low}{hint}, got {v}")
  if high is not None:
    _require(v <= high, field, f"must be <= {high}{hint}, got {v}")


def _real(config, field: str, low: float, high: float | None = None, *, low_open=False, high_open=False, note=""):
  """A finite number in [low, high] (open ends where asked)."""
  v = _get(config, field)
  _require(_is_real(v), field, f"must be a number, got {v!r} ({type(v).__name__})")
  _require(bool(np.isfinite(v)), field, f"must be finite, got {v}")
  lo, hi = ("(" if low_open else "["), ("" if high is None else (")" if high_open else "]"))
  span = f"in {lo}{low:g}, {high:g}{hi}" if high is not None else (f"> {low:g}" if low_open else f">= {low:g}")
  hint = f" {note}" if note else ""
  ok = (v > low if low_open else v >= low) and (high is None or (v < high if high_open else v <= high))
  _require(ok, field, f"must be {span}{hint}, got {v}")


def _choice(config, field: str, choices: tuple, what: str = "value"):
  v = _get(config, field)
  _require(isinstance(v, str) and v in choices, field, f"unknown {what} {v!r}; expected one of {choices}")


def _bool(config, field: str):
  v = _get(config, field)
  _require(isinstance(v, (bool, np.bool_)), field, f"must be True or False, got {v!r}")


def check_config(config) -> None:
  """Checks values that need no data: raises ``ConfigError`` naming the field.

  Every field of `fedjaxscale.training.defaults.get_base` is checked for its type and range, so a
  value that would only fail mid-run (or, worse, run and give nonsense: a learning rate of NaN, a
  deadline of inf, beta1 = 1.5) is refused before anything is written.
  """
  from fedjaxscale.training.defaults import get_base  # the schema: every field a config may have

  base = get_base()
  unknown = sorted(_unknown_fields(config, base))
  _require(not unknown, unknown[0] if unknown else "", "is not a known field (see fedjaxscale/training/defaults.py)")
  missing = sorted(_missing_fields(config, base))
  _require(not missing, missing[0] if missing else "", "is missing (every field of defaults.get_base() is needed)")
  _int(config, "seed", 0, 2**63 - 1)
  _int(config, "rounds", 1)
  _int(config, "clients_per_round", 1)
  _int(config, "local.batch_size", 1)
  _int(config, "local.local_steps", 0)
  _real(config, "local.local_epochs", 0.0)
  _require(
    (config.local.local_steps > 0) != (config.local.local_epochs > 0),
    "local",
    f"set exactly one of local_steps and local_epochs above 0, got local_steps={config.local.local_steps}, "
    f"local_epochs={config.local.local_epochs}",
  )
  _choice(config, "algorithm.name", ALGORITHMS, "algorithm")
  _choice(config, "model.name", MODELS, "model")
  _choice(config, "model.compute_dtype", ("float32", "bfloat16"), "compute dtype")
  _require(
    config.model.compute_dtype == "float32" or config.model.name not in SEQUENCE_MODELS,
    "model.compute_dtype",
    f"{config.model.name} computes in float32 only (bfloat16 is for the vision and dense models)",
  )
  _choice(config, "algorithm.weighting", ("num_examples", "uniform"))
  a = "algorithm."
  _real(config, a + "client_lr", 0.0, low_open=True)
  _real(config, a + "client_momentum", 0.0, 1.0, high_open=True)
  _real(config, a + "client_lr_decay", 0.0, 1.0, low_open=True)
  _int(config, a + "client_lr_decay_every", 1)
  _real(config, a + "client_lr_min", 0.0)
  _real(config, a + "server_lr", 0.0, low_open=True)
  _real(config, a + "server_momentum", 0.0, 1.0, high_open=True)
  _real(config, a + "mu", 0.0)
  _real(config, a + "beta1", 0.0, 1.0, high_open=True)
  _real(config, a + "beta2", 0.0, 1.0, high_open=True)
  _real(config, a + "tau", 0.0, low_open=True)
  _real(config, a + "initial_v", 0.0)
  m = "model."
  _int(config, m + "num_classes", 1)
  _int(config, m + "dense", 1)
  _int(config, m + "vocab_size", 0, note="(0: the model's default)")
  _int(config, m + "embed_dim", 0, note="(0: the model's default)")
  _int(config, m + "width", 1)
  _int(config, m + "groups", 1)
  for field in ("hidden", "lstm_sizes"):
    v = config.model[field]
    _require(
      isinstance(v, (tuple, list)) and all(_is_int(h) and h >= 1 for h in v),
      m + field,
      f"must be a tuple of ints >= 1, got {v!r}",
    )
  _choice(config, "data.kind", ("synthetic", "directory"))
  _require(isinstance(config.data.path, str), "data.path", f"must be a str, got {config.data.path!r}")
  if config.data.kind == "directory":
    _require(bool(config.data.path), "data.path", "is required when data.kind is 'directory'")
    root = resolve_path(config.data.path)
    _require(root.is_dir(), "data.path", f"{root} does not exist or is not a directory")
    _require((root / "train" / "meta.json").exists(), "data.path", f"{root} holds no train/ split (train/meta.json)")
  else:
    _int(config, "data.num_clients", 1)
    _real(config, "data.alpha", 0.0)
    _real(config, "data.beta", 0.0)
    _bool(config, "data.iid")
    _int(config, "data.max_size", 0, note="(0: none)")
    _require(
      config.data.max_size == 0 or config.data.max_size >= SYNTHETIC_MIN_SIZE,
      "data.max_size",
      f"must be 0 (no cap) or >= {SYNTHETIC_MIN_SIZE} (every Synthetic client has at least that many examples), "
      f"got {config.data.max_size}",
    )
    _int(config, "data.seed", 0, 2**63 - 1)
    _require(
      config.clients_per_round <= config.data.num_clients,
      "clients_per_round",
      f"{config.clients_per_round} is more than the population ({config.data.num_clients} clients)",
    )
  s = "system."
  _require(isinstance(config.system.traces, str), s + "traces", f"must be a str, got {config.system.traces!r}")
  _bool(config, s + "always_online")
  _choice(config, s + "mapping", ("modulo", "fedscale", "identity"))
  _choice(config, s + "mode", ("sync", "async"))
  _choice(config, s + "selection", ("random", "oort", "poisson"))
  _check_privacy(config)
  _choice(config, s + "stragglers", ("drop", "partial"))
  modes = ("window", "start", "endpoints") if config.system.mode == "async" else ("window", "endpoints")
  _choice(config, s + "availability_mode", modes, f"{config.system.mode} availability mode")
  _real(config, s + "overcommit", 1.0)
  _choice(config, s + "overcommit_rounding", ("ceil", "floor"))
  _choice(config, s + "async_aggregation", ("deltas", "models"))
  _real(config, s + "deadline_s", 0.0, note="(0: no deadline)")
  _real(config, s + "backward_factor", 0.0, low_open=True)
  _real(config, s + "compression", 0.0, 1.0, low_open=True, note="(the uploaded fraction of the update)")
  _int(config, s + "max_concurrency", 1)
  _int(config, s + "max_staleness", 0)
  if config.system.traces:
    p = resolve_path(config.system.traces)
    _require(p.exists(), s + "traces", f"{p} does not exist")
  if config.system.mode == "async":
    _require(
      config.system.max_concurrency >= config.clients_per_round,
      s + "max_concurrency",
      f"{config.system.max_concurrency} clients in flight cannot fill a buffer of {config.clients_per_round}",
    )
  _int(config, "eval_every", 0, note="(0: never)")
  _int(config, "eval_batch_size", 1)
  _bool(config, "eval_train")
  _bool(config, "plots")
  _real(config, "target_accuracy", 0.0, 1.0, note="(0: none)")
  _int(config, "checkpoint_every", 0, note="(0: none)")
  _choice(config, "engine.backend", ("vmap", "loop", "debug"), "backend")
  _int(config, "engine.max_clients_per_chunk", 0, note="(0: as many as the memory budget allows)")
  _int(config, "engine.rounds_per_call", 1, note="(1: a round a call)")
  _require(
    parse_strategy(config.engine.strategy) is not None,
    "engine.strategy",
    f"{config.engine.strategy!r} is not one of 'auto', 'vmap', 'map', 'map:<k>' (k >= 1 clients at a time), "
    "optionally followed by '+patches' or '+lax'",
  )
  client_states.check_config(config, _require)


def _check_privacy(config) -> None:
  """The DP, compression and secure-aggregation fields (issue 12)."""
  s, pv, cp, sa = config.system, config.privacy, config.compression, config.secagg
  if s.selection == "poisson":
    _require(
      0 < s.sampling_rate <= 1,
      "system.sampling_rate",
      f"must be in (0, 1] for Poisson selection, got {s.sampling_rate}",
    )
    _require(s.mode == "sync", "system.selection", "'poisson' selection is for synchronous rounds (system.mode='sync')")
  if pv.enabled:
    _require(pv.clip_norm > 0, "privacy.clip_norm", f"must be > 0, got {pv.clip_norm}")
    _require(pv.noise_multiplier >= 0, "privacy.noise_multiplier", f"must be >= 0, got {pv.noise_multiplier}")
    _require(0 < pv.delta < 1, "privacy.delta", f"must be in (0, 1), got {pv.delta}")
    _require(
      pv.target_epsilon >= 0,
      "privacy.target_epsilon",
      f"must be >= 0 (0: use noise_multiplier), got {pv.target_epsilon}",
    )
    _require(
      pv.accountant in privacy_lib.ACCOUNTANTS,
      "privacy.accountant",
      f"must be one of {privacy_lib.ACCOUNTANTS}, got {pv.accountant!r}",
    )
    _require(
      0 <= pv.adaptive_quantile < 1,
      "privacy.adaptive_quantile",
      f"must be in [0, 1) (0: fixed C), got {pv.adaptive_quantile}",
    )
    _require(pv.adaptive_lr > 0, "privacy.adaptive_lr", f"must be > 0, got {pv.adaptive_lr}")
    _require(pv.count_noise >= 0, "privacy.count_noise", f"must be >= 0, got {pv.count_noise}")
    _require(s.mode == "sync", "privacy.enabled", "DP is accounted for synchronous rounds only (system.mode='sync')")
    _require(
      s.selection in ("random", "poisson"),
      "privacy.enabled",
      f"system.selection={s.selection!r} chooses clients from their training losses, which no accountant covers; "
      "use 'poisson' or 'random'",
    )
    _require(
      pv.accountant == "rdp" or s.selection == "poisson",
      "privacy.accountant",
      "'pld' accounts Poisson sampling only; use 'rdp' with system.selection='random'",
    )
    _require(s.stragglers == "drop", "system.stragglers", "DP needs 'drop': partial updates are not what was sampled")
  _require(
    cp.encoder in ("none", "quantize", "topk"),
    "compression.encoder",
    f"must be 'none', 'quantize' or 'topk', got {cp.encoder!r}",
  )
  if cp.encoder == "quantize":
    _require(
      int(cp.bits) == cp.bits and 1 <= cp.bits <= 32, "compression.bits", f"must be an integer in 1..32, got {cp.bits}"
    )
  if cp.encoder == "topk":
    _require(int(cp.topk) == cp.topk and cp.topk >= 1, "compression.topk", f"must be an integer >= 1, got {cp.topk}")
  if cp.encoder == "quantize" and cp.rotate:
    b = cp.rotation_block
    _require(
      int(b) == b and b >= 1 and int(b) & (int(b) - 1) == 0,
      "compression.rotation_block",
      f"must be a power of 2, got {b}",
    )
  if cp.error_feedback:
    _require(cp.encoder != "none", "compression.error_feedback", "needs compression.encoder ('topk' or 'quantize')")
    _require(s.mode == "sync", "compression.error_feedback", "keeps client states: synchronous rounds only")
  _require(
    config.algorithm.name not in client_states.STATEFUL or not (pv.enabled or cp.encoder != "none" or sa.enabled),
    "algorithm.name",
    f"{config.algorithm.name} keeps client states of its own; DP, compression and secure aggregation wrap "
    "the stateless algorithms (fedavg, fedprox, fedyogi, fedadam, fedadagrad)",
  )
  if cp.encoder != "none":
    _require(
      s.compression == 1.0,
      "system.compression",
      "set 1.0 when compression.encoder is set (the encoder sizes the upload)",
    )
  if sa.enabled:
    _require(
      int(sa.bits) == sa.bits and 2 <= sa.bits <= 32, "secagg.bits", f"must be an integer in 2..32, got {sa.bits}"
    )
    _require(sa.range >= 0, "secagg.range", f"must be >= 0, got {sa.range}")
    _require(sa.range > 0 or pv.enabled, "secagg.range", "must be > 0 without DP (with DP, 0 means clip_norm x cohort)")
    _require(s.mode == "sync", "secagg.enabled", "simulated for synchronous rounds only (system.mode='sync')")


STRATEGY = re.compile(r"(auto|vmap|map|map:[1-9][0-9]*)(?:\+(patches|lax))?")


def parse_strategy(strategy) -> tuple[str, str | None] | None:
  """``'map:8+patches'`` -> ``('map:8', 'patches')``; None for a string outside the grammar (the
  engine checks what this installation can run, e.g. ``+patches`` needs the patches convolution)."""
  match = STRATEGY.fullmatch(strategy) if isinstance(strategy, str) else None
  return None if match is None else (match.group(1), match.group(2))
