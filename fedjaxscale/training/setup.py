"""From a config to the run's parts: data, model, algorithm, traces, planner.

Everything here is checked before anything is written or trained: an unknown name, a cohort
larger than the population, a batch of zero, a path that does not exist, a model whose output
does not match the labels all raise one ``ConfigError`` naming the field, and the CLI turns it
into exit code 2.
"""

import dataclasses
import inspect
import math
import os
import pathlib
import re
import warnings
from typing import Any

import jax
import numpy as np
import optax

from fedjaxscale import algorithms, models
from fedjaxscale.algorithms import dp, encoders, secagg
from fedjaxscale.data import DatasetError, FederatedDataset, steps_for, write_synthetic
from fedjaxscale.data.synthetic import synthetic_client_sizes
from fedjaxscale.engine import Engine
from fedjaxscale.scheduler import AsyncConfig, AsyncPlanner, OortSelection, PoissonSelection, SyncConfig, SyncPlanner
from fedjaxscale.state import StoreTooLarge
from fedjaxscale.systems import (
  Availability,
  LatencyModel,
  SystemTraces,
  TraceError,
  generate_traces,
  load_traces,
  model_bits,
)
from fedjaxscale.training import client_states
from fedjaxscale.training import privacy as privacy_lib
from fedjaxscale.training import workdir as run_dir
from fedjaxscale.training.distributed import barrier, is_lead

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


@dataclasses.dataclass
class RunParts:
  """Everything a run is made of, built and checked from a config."""

  train: FederatedDataset
  test: FederatedDataset | None
  model: models.Model
  algorithm: algorithms.Algorithm
  engine: Engine
  planner: SyncPlanner | AsyncPlanner
  traces: Any
  latency: LatencyModel
  full_steps: np.ndarray  # per-client local steps of a full round of work
  num_params: int
  upload_bits: int = 0  # bits a client uploads (the encoder's exact size); 0: float32 model x system.compression
  privacy: privacy_lib.RunPrivacy | None = None  # the DP ledger, when config.privacy.enabled
  staged: bool = False  # Synthetic data generated into workdir/.data.staged, awaiting commit_data


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
  _real(config, "target_accuracy", 0.0, 1.0, note="(0: none)")
  _int(config, "checkpoint_every", 0, note="(0: none)")
  _choice(config, "engine.backend", ("vmap", "loop", "debug"), "backend")
  _int(config, "engine.max_clients_per_chunk", 0, note="(0: as many as the memory budget allows)")
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


def load_data(config, workdir: pathlib.Path, *, resume: bool = False):
  """Opens the configured data: ``(train, test, staged)``.

  Synthetic data lives in ``workdir/data``; it is reused only if its provenance matches the
  config, and otherwise generated (both splits) into ``workdir/.data.staged``, which
  `fedjaxscale.training.workdir.commit_data` renames into place once the run has been checked
  (``staged`` is True then). A resumed run's data must match: a mismatch is refused.
  """
  try:
    if config.data.kind == "directory":
      root = resolve_path(config.data.path)
      train = FederatedDataset.open(root / "train")
      test = FederatedDataset.open(root / "test") if (root / "test" / "meta.json").exists() else None
      return train, test, False
    data, staged = workdir / run_dir.DATA, workdir / run_dir.STAGED_DATA
    if is_lead():  # one writer; the rest wait, then read
      run_dir.remove_staged(workdir)  # left by a killed command (we hold the workdir's lock)
      if not run_dir.synthetic_matches(data, config):
        _require(
          not (resume and data.exists()),
          "data",
          f"{data} was not generated for this config's data fields {run_dir.synthetic_parameters(config)}; "
          "it was changed since the run started (use --overwrite to start a new run)",
        )
        write_synthetic(
          staged,
          config.data.num_clients,
          alpha=config.data.alpha,
          beta=config.data.beta,
          iid=config.data.iid,
          seed=config.data.seed,
          max_size=config.data.max_size or None,
        )
    barrier("fedjaxscale:synthetic-data")
    root = staged if (staged / "test" / "meta.json").exists() else data
    return FederatedDataset.open(root / "train"), FederatedDataset.open(root / "test"), root == staged
  except DatasetError as e:
    raise ConfigError(f"config.data: {e}") from e


def reopen_data(workdir: pathlib.Path) -> tuple[FederatedDataset, FederatedDataset]:
  """The Synthetic splits from ``workdir/data`` (after `workdir.commit_data` moved them there)."""
  root = workdir / run_dir.DATA
  return FederatedDataset.open(root / "train"), FederatedDataset.open(root / "test")


def build_model(config, train: FederatedDataset) -> models.Model:
  m = config.model
  specs = train.feature_specs
  _require("x" in specs and "y" in specs, "data", f"the dataset needs features 'x' and 'y', it has {sorted(specs)}")
  seq = {
    k: v
    for k, v in (("vocab_size", m.vocab_size), ("embed_dim", m.embed_dim), ("lstm_sizes", tuple(m.lstm_sizes)))
    if v
  }
  x_shape = tuple(specs["x"][1])
  dtype = {"compute_dtype": m.compute_dtype}
  if m.name == "femnist_cnn":
    model = models.femnist_cnn(m.num_classes, dense=m.dense, **dtype)
  elif m.name == "resnet18_gn":
    model = models.resnet18_gn(m.num_classes, groups=m.groups, width=m.width, image_shape=x_shape, **dtype)
  elif m.name == "speech_cnn":
    model = models.speech_cnn(m.num_classes, num_mels=x_shape[-1], **dtype)
  elif m.name in SEQUENCE_MODELS:
    model = getattr(models, m.name)(**seq)
  elif m.name == "mlp":
    model = models.mlp(int(np.prod(specs["x"][1])), m.num_classes, tuple(m.hidden), **dtype)
  else:
    model = models.logistic_regression(int(np.prod(specs["x"][1])), m.num_classes, **dtype)
  # The model must read the data's examples and its outputs must cover the labels.
  sample = train.rows(np.arange(min(2, train.num_examples)))
  try:
    out = jax.eval_shape(lambda p: model.apply(p, sample, None, False), jax.eval_shape(model.init, jax.random.key(0)))
  except Exception as e:  # shape errors from flax name the layer; keep them
    raise ConfigError(f"config.model: {m.name} cannot read the data's 'x' {specs['x']}: {e}") from e
  num_classes = int(out.shape[-1])
  if train.label_names:
    _require(
      num_classes >= len(train.label_names),
      "model.num_classes",
      f"the model outputs {num_classes} classes but the data has labels up to {len(train.label_names) - 1} "
      f"({len(train.label_names)} label names)",
    )
  return model


STRATEGY = re.compile(r"(auto|vmap|map|map:[1-9][0-9]*)(?:\+(patches|lax))?")


def parse_strategy(strategy) -> tuple[str, str | None] | None:
  """``'map:8+patches'`` -> ``('map:8', 'patches')``; None for a string outside the grammar (the
  engine checks what this installation can run, e.g. ``+patches`` needs the patches convolution)."""
  match = STRATEGY.fullmatch(strategy) if isinstance(strategy, str) else None
  return None if match is None else (match.group(1), match.group(2))


def build_engine(config) -> Engine:
  """The configured engine; ``engine.strategy`` goes to engines that take one."""
  e = config.engine
  kwargs = {"max_clients_per_chunk": e.max_clients_per_chunk or None}
  if "strategy" in inspect.signature(Engine).parameters:
    kwargs["strategy"] = e.strategy
  else:
    _require(e.strategy == "auto", "engine.strategy", f"{e.strategy!r}: this engine has no execution strategies yet")
  try:
    return Engine(e.backend, **kwargs)
  except ValueError as err:  # the engine names what it cannot do with these settings
    field = "engine.strategy" if "strateg" in str(err) else "engine"
    raise ConfigError(f"config.{field}: {err}") from err


def check_examples(config, model: models.Model, train: FederatedDataset, test: FederatedDataset | None) -> None:
  """Every split's labels are integers in ``[0, num_classes)`` (and a sequence model's token
  ids lie in its vocabulary); the test split reads like the training split; no client is empty."""
  sample = train.rows(np.arange(min(2, train.num_examples)))
  out = jax.eval_shape(lambda p: model.apply(p, sample, None, False), jax.eval_shape(model.init, jax.random.key(0)))
  num_classes = int(out.shape[-1])
  sequence = config.model.name in SEQUENCE_MODELS
  empty = np.flatnonzero(train.client_sizes == 0)
  _require(
    empty.size == 0,
    "data",
    f"{train.path}: {empty.size} client(s) hold no examples (first: {train.client_ids[empty[0]]!r})"
    if empty.size
    else "",
  )
  splits = [("train", train)] + ([("test", test)] if test is not None else [])
  for name, split in splits:
    if name == "test":
      _require("y" in split.feature_specs, "data", f"{split.path}: the test split has no 'y' feature")
      for feature in ("x", "y"):
        _require(feature in split.feature_specs, "data", f"{split.path}: the test split has no {feature!r} feature")
        got, want = split.feature_specs[feature], train.feature_specs[feature]
        _require(
          got[1] == want[1],
          "data",
          f"{split.path}: feature {feature!r} has per-example shape {got[1]} in the test split but {want[1]} in train",
        )
    checks = [("y", "labels", num_classes)]
    if sequence:
      checks.append(("x", "token ids", num_classes))
    for feature, what, limit in checks:
      values = split.features[feature]
      where = f"{split.path}/{feature}.npy"
      _require(
        values.dtype.kind in "iu",
        "data",
        f"{where}: {what} must be integers, got dtype {values.dtype} (convert whole-number floats when converting)",
      )
      if values.size == 0:
        continue
      low, high = int(np.min(values)), int(np.max(values))
      _require(
        low >= 0 and high < limit,
        "model.num_classes" if feature == "y" and not sequence else "model.vocab_size",
        f"{where}: {what} span [{low}, {high}] but {model.name} reads [0, {limit})",
      )


def build_algorithm(config, model: models.Model, engine: Engine) -> algorithms.Algorithm:
  a = config.algorithm
  client_opt = optax.sgd(a.client_lr, momentum=a.client_momentum or None)
  schedule = None
  if a.client_lr_decay != 1.0:
    # FedScale's decay: x decay every decay_every rounds, floored at client_lr_min.
    floor = a.client_lr_min / a.client_lr
    decay = optax.exponential_decay(1.0, a.client_lr_decay_every, a.client_lr_decay, staircase=True)
    schedule = lambda r: jax.numpy.maximum(decay(r), floor)
  common = dict(weighting=a.weighting, client_lr_schedule=schedule, engine=engine)
  if a.name in ("fedavg", "fedprox"):
    server = optax.sgd(a.server_lr, momentum=a.server_momentum or None)
    if a.name == "fedavg":
      return algorithms.fedavg(model, client_opt, server, **common)
    return algorithms.fedprox(model, client_opt, server, mu=a.mu, **common)
  factory = {"fedyogi": algorithms.fedyogi, "fedadam": algorithms.fedadam, "fedadagrad": algorithms.fedadagrad}[a.name]
  return factory(model, client_opt, a.server_lr, a.beta1, a.beta2, a.tau, initial_v=a.initial_v or None, **common)


def build(config, workdir: pathlib.Path, *, resume: bool = False) -> RunParts:
  """Checks the config and builds the run (Synthetic data is generated into ``workdir`` if needed:
  see `load_data`; ``RunParts.staged`` says whether it awaits `workdir.commit_data`)."""
  check_config(config)
  train, test, staged = load_data(config, workdir, resume=resume)
  _require(
    config.clients_per_round <= train.num_clients,
    "clients_per_round",
    f"{config.clients_per_round} is more than the population ({train.num_clients} clients)",
  )
  model = build_model(config, train)
  check_examples(config, model, train, test)
  engine = build_engine(config)
  if config.algorithm.name in client_states.STATEFUL:
    algorithm = client_states.build_algorithm(config, model, engine, train.num_clients)
    try:  # the client-state store's size, before anything is trained or written
      client_states.plan_store(config, algorithm, model, train.num_clients, workdir)
    except StoreTooLarge as e:
      raise ConfigError(f"config.{e}") from None
  else:
    algorithm = build_algorithm(config, model, engine)
  num_params = sum(int(np.prod(x.shape)) for x in jax.tree.leaves(jax.eval_shape(model.init, jax.random.key(0))))
  s = config.system
  try:
    if s.traces:
      traces = load_traces(resolve_path(s.traces))
    else:
      traces = generate_traces(train.num_clients, seed=config.seed)
  except TraceError as e:
    raise ConfigError(f"config.system.traces: {e}") from e
  try:
    traces = traces.for_population(train.num_clients, mapping=s.mapping)
  except ValueError as e:
    raise ConfigError(f"config.system.mapping: {e}") from e
  if s.always_online:
    traces = _always_online(traces)
  _require(
    bool(np.isfinite(traces.availability.next_online_time(0.0))),
    "system.traces",
    f"no client of the population is ever online in {s.traces or 'the generated traces'}",
  )
  _warn_if_sparse(config, traces)
  local = config.local
  bits = model_bits(num_params, "float32")
  algorithm, ledger, up_bits = _wrap_private(config, algorithm, train.num_clients, num_params)
  if config.compression.error_feedback:  # the residuals' store, sized before anything is written
    try:
      client_states.plan_store(config, algorithm, model, train.num_clients, workdir)
    except StoreTooLarge as e:
      raise ConfigError(f"config.{e}") from None
  if local.local_steps > 0:
    latency = LatencyModel(
      bits,
      local_steps=local.local_steps,
      batch_size=local.batch_size,
      backward_factor=s.backward_factor,
      compression=s.compression,
      update_bits=up_bits,
    )
    full_steps = steps_for(train.client_sizes, local.batch_size, local_steps=local.local_steps)
  else:
    latency = LatencyModel(
      bits, epochs=local.local_epochs, backward_factor=s.backward_factor, compression=s.compression, update_bits=up_bits
    )
    full_steps = steps_for(train.client_sizes, local.batch_size, local_epochs=local.local_epochs)
  sizes = np.asarray(train.client_sizes)
  policy = None
  if s.selection == "oort":
    expected = latency.latency(traces, np.arange(train.num_clients), sizes).total
    policy = OortSelection(sizes, expected)
  elif s.selection == "poisson":
    policy = PoissonSelection(s.sampling_rate)
  try:
    planner = _planner(config, traces, latency, sizes, policy)
  except ConfigError:
    raise
  except ValueError as e:  # the scheduler names its own bad settings
    raise ConfigError(f"config.system: {e}") from e
  upload_bits = up_bits if up_bits is not None else math.ceil(bits * s.compression)
  return RunParts(
    train,
    test,
    model,
    algorithm,
    engine,
    planner,
    traces,
    latency,
    full_steps,
    num_params,
    upload_bits=upload_bits,
    privacy=ledger,
    staged=staged,
  )


def _wrap_private(config, algorithm, num_clients: int, num_params: int):
  """Wraps the algorithm with DP / an encoder / SecAgg as configured (``algorithms.dp``).

  Returns ``(algorithm, privacy ledger or None, upload bits or None for the float32 default)``.
  """
  s, pv, cp, sa = config.system, config.privacy, config.compression, config.secagg
  encoder, up_bits = None, None
  if cp.encoder != "none":
    encoder = encoders.from_config(cp.encoder, bits=cp.bits, rotate=cp.rotate, k=cp.topk, block=cp.rotation_block)
    try:
      up_bits = encoder.num_bits(num_params)
    except ValueError as e:  # top-k larger than the update
      raise ConfigError(f"config.compression.topk: {e}") from None
  if not (pv.enabled or encoder is not None or sa.enabled):
    return algorithm, None, None
  poisson = s.selection == "poisson"
  selected = SyncConfig(config.clients_per_round, overcommit=s.overcommit).num_selected
  rate = s.sampling_rate if poisson else min(selected / num_clients, 1.0)
  expected = dp.expected_cohort(s.selection, config.clients_per_round, num_clients, s.sampling_rate)
  ledger, kwargs = None, {}
  if pv.enabled:
    z = pv.noise_multiplier
    if pv.target_epsilon > 0:
      z = privacy_lib.noise_for_epsilon(
        pv.target_epsilon, pv.delta, config.rounds, rate, pv.accountant, poisson=poisson, population=num_clients
      )
    adaptive = None
    if pv.adaptive_quantile > 0:
      adaptive = dp.AdaptiveClipping(pv.adaptive_quantile, pv.adaptive_lr, pv.count_noise or expected / 20.0)
      try:
        dp.update_noise_multiplier(z, adaptive)
      except ValueError as e:
        raise ConfigError(f"config.privacy.count_noise: {e}") from None
    kwargs = dict(clip_norm=pv.clip_norm, noise_multiplier=z, expected_clients=expected, adaptive=adaptive)
    ledger = privacy_lib.RunPrivacy(
      z, pv.delta, pv.accountant, poisson, s.sampling_rate if poisson else 0.0, num_clients
    )
  sec = None
  if sa.enabled:
    sec = secagg.secagg(sa.bits, sa.range or pv.clip_norm * expected)
    up_bits = int(sa.bits) * num_params  # modular sums need the dense vector: the encoder's savings are lost
  wrapped = dp.private_aggregation(
    algorithm, encoder=encoder, secure_aggregation=sec, error_feedback=cp.error_feedback, seed=config.seed, **kwargs
  )
  return wrapped, ledger, up_bits


def online_counts(availability) -> tuple[np.ndarray, np.ndarray]:
  """Clients online at each simulated hour of the trace period: ``(hours, counts)``."""
  period = float(np.max(availability.period)) if np.ndim(availability.period) else float(availability.period)
  hours = np.arange(0, int(period // 3600) + 1, dtype=np.float64)
  counts = np.array([int(availability.online_mask(h * 3600.0).sum()) for h in hours], np.int64)
  return hours, counts


def _warn_if_sparse(config, traces) -> None:
  """Warns when fewer clients are online, on average, than a round (or FedBuff) asks for."""
  s = config.system
  wanted = s.max_concurrency if s.mode == "async" else int(np.ceil(s.overcommit * config.clients_per_round))
  _, counts = online_counts(traces.availability)
  mean = float(np.mean(counts)) if counts.size else 0.0
  if mean < wanted:
    warnings.warn(
      f"only about {mean:.1f} of the {traces.num_clients} clients are online at a time (hourly mean over the "
      f"trace period), fewer than the {wanted} a round asks for: rounds will select fewer clients "
      "(a larger population, or system.always_online, fills them)",
      RuntimeWarning,
      stacklevel=3,
    )


def _always_online(traces):
  """The same devices (speeds, bandwidths), each available for the whole trace period."""
  n = traces.num_clients
  period = float(np.max(traces.availability.period))
  availability = Availability.from_intervals(
    np.arange(n + 1, dtype=np.int64), np.zeros(n), np.full(n, period), period, source="always online"
  )
  return SystemTraces.create(traces.compute_ms, traces.down_kbps, traces.up_kbps, availability, source="always online")


def _planner(config, traces, latency, sizes, policy):
  s = config.system
  if s.mode == "sync":
    sync = SyncConfig(
      config.clients_per_round,
      overcommit=s.overcommit,
      deadline_s=s.deadline_s or None,
      availability_mode=s.availability_mode,
      round_up=s.overcommit_rounding == "ceil",
    )
    return SyncPlanner(traces, latency, sync, sizes, policy, seed=config.seed)
  _require(
    s.max_concurrency >= config.clients_per_round,
    "system.max_concurrency",
    f"{s.max_concurrency} clients in flight cannot fill a buffer of {config.clients_per_round}",
  )
  buffered = AsyncConfig(
    config.clients_per_round, s.max_concurrency, max_staleness=s.max_staleness, availability_mode=s.availability_mode
  )
  return AsyncPlanner(traces, latency, buffered, sizes, policy, seed=config.seed)


def model_bytes(num_params: int) -> int:
  return int(num_params) * 4
