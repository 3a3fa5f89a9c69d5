"""From a config to the run's parts: data, model, algorithm, traces, planner.

Everything is checked before anything is written or trained: the config's fields by
`validation.check_config`, and here what needs the data: a cohort larger than the population, a
path that holds no dataset, a model whose output does not match the labels. Each raises one
``ConfigError`` naming the field, and the CLI turns it into exit code 2.
"""

import dataclasses
import inspect
import math
import pathlib
import warnings
from typing import Any

import jax
import numpy as np
import optax

from fedjaxscale import algorithms, models
from fedjaxscale.algorithms import dp, encoders, secagg
from fedjaxscale.data import DatasetError, FederatedDataset, steps_for, write_synthetic
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

# Config validation lives in `validation`; its names stay importable from here.
from fedjaxscale.training.validation import (  # noqa: F401
  ALGORITHMS,
  MODELS,
  REPO_ROOT,
  SEQUENCE_MODELS,
  STRATEGY,
  SYNTHETIC_MIN_SIZE,
  ConfigError,
  _require,
  check_config,
  parse_strategy,
  resolve_path,
)


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


def _off(value) -> bool:
  """A Python zero: the feature it sets is left out. (A stacked sweep passes tracers for the values
  that differ between its points; `stacked.can_stack` keeps zeros and non-zeros apart.)"""
  return isinstance(value, (int, float)) and value == 0


def build_algorithm(config, model: models.Model, engine: Engine) -> algorithms.Algorithm:
  """The config's algorithm; every `stacked.VMAPPABLE` field may be a traced array."""
  a = config.algorithm
  client_opt = optax.sgd(a.client_lr, momentum=None if _off(a.client_momentum) else a.client_momentum)
  schedule = None
  if a.client_lr_decay != 1.0:
    # FedScale's decay: x decay every decay_every rounds, floored at client_lr_min.
    floor = a.client_lr_min / a.client_lr
    decay = optax.exponential_decay(1.0, a.client_lr_decay_every, a.client_lr_decay, staircase=True)
    schedule = lambda r: jax.numpy.maximum(decay(r), floor)
  common = dict(weighting=a.weighting, client_lr_schedule=schedule, engine=engine)
  if a.name in ("fedavg", "fedprox"):
    server = optax.sgd(a.server_lr, momentum=None if _off(a.server_momentum) else a.server_momentum)
    if a.name == "fedavg":
      return algorithms.fedavg(model, client_opt, server, **common)
    return algorithms.fedprox(model, client_opt, server, mu=a.mu, **common)
  factory = {"fedyogi": algorithms.fedyogi, "fedadam": algorithms.fedadam, "fedadagrad": algorithms.fedadagrad}[a.name]
  initial_v = a.initial_v
  if isinstance(initial_v, (int, float)):
    initial_v = initial_v or None  # 0: tau ** 2
  else:  # traced: 0 still means tau ** 2 (the optimizer state has the same structure either way)
    initial_v = jax.numpy.where(initial_v > 0, initial_v, jax.numpy.square(a.tau))
  return factory(model, client_opt, a.server_lr, a.beta1, a.beta2, a.tau, initial_v=initial_v, **common)


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
  return hours, availability.online_counts(hours * 3600.0)


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
