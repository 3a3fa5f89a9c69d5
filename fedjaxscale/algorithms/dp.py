"""Private and compressed aggregation that wraps any algorithm: DP-FedAvg, encoders, SecAgg.

Learning Differentially Private Recurrent Language Models. H. Brendan McMahan, Daniel Ramage,
Kunal Talwar, Li Zhang. ICLR 2018. arXiv:1710.06963. (DP-FedAvg, user-level.)
Differentially Private Learning with Adaptive Clipping. Galen Andrew, Om Thakkar, H. Brendan
McMahan, Swaroop Ramaswamy. NeurIPS 2021. arXiv:1905.03871.

``private_aggregation(algorithm, ...)`` takes any ``Algorithm`` built by ``build_algorithm``
(fedavg, fedprox, fedyogi, fedadam, fedadagrad) and returns one whose clients, on device and
per client, before weighting:

    Delta_k <- Delta_k * min(1, C / ||Delta_k||)       (clip; w_k <- 1 if the client trained)
    Delta_k <- decode(encode(Delta_k))                  (optional encoder; rescaled to <= C)
    Delta_k <- fixed_point(Delta_k) mod 2**bits         (optional secure aggregation)

and whose server, on device, forms

    Delta = (sum_k Delta_k + N(0, (z C)^2 I)) / E[cohort size]     (fixed denominator)

with the noise drawn from ``fold_in(noise_key, round)`` (so a resumed run draws the same
noise), then takes the wrapped algorithm's own server-optimizer step with ``Delta``. With
adaptive clipping each client also reports ``b_k = [||Delta_k|| <= C]`` and the server updates

    b = (sum_k b_k + N(0, sigma_b^2)) / E[cohort size],   C <- C exp(-eta_C (b - gamma))

splitting the noise so the round is still a Gaussian mechanism of multiplier z: the update's
multiplier is ``z_Delta = (z^-2 - (2 sigma_b)^-2)^(-1/2)`` (Andrew et al., Theorem 1).

Without ``clip_norm`` (no DP), an encoder and/or secure aggregation alone wrap the clients'
updates, and the server keeps the usual weighted mean.

With ``error_feedback`` (for a biased encoder such as top-k) each client keeps the part of its
update the encoder did not send and adds it to its next update before encoding:

    v_k = Delta_k + e_k,   sent_k = decode(encode(v_k)),   e_k <- v_k - sent_k

(e_k = 0 before the client's first round; a client that is not aggregated keeps its e_k).
Sparsified SGD with Memory. Sebastian U. Stich, Jean-Baptiste Cordonnier, Martin Jaggi. NeurIPS
2018. arXiv:1809.07599. Error Feedback Fixes SignSGD and other Gradient Compression Schemes. Sai
Praneeth Karimireddy, Quentin Rebjock, Sebastian U. Stich, Martin Jaggi. ICML 2019.
arXiv:1901.09847. The residuals are per-client state: the wrapped algorithm is then a
``StatefulAlgorithm`` whose residuals live in the client-state store between rounds (and in the
run's checkpoints), shaped like the parameters in float32. With DP the residual is added after
clipping and the upload is scaled back to C, so the sensitivity stays C.
"""

from collections.abc import Mapping
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax.flatten_util import ravel_pytree

from fedjaxscale.algorithms import secagg as secagg_lib
from fedjaxscale.algorithms.base import Algorithm, ServerState, diagnostics_of
from fedjaxscale.algorithms.encoders import UpdateEncoder, apply_encoder
from fedjaxscale.algorithms.stateful import StatefulAlgorithm
from fedjaxscale.core.cohort import Cohort
from fedjaxscale.core.deferred import Deferred
from fedjaxscale.core.tree import tree_all_finite, tree_sq_norm
from fedjaxscale.core.types import PRNGKey
from fedjaxscale.engine.executor import Aggregate, ClientOutput, ClientProgram
from fedjaxscale.engine.state import StatefulProgram, run_stateful, state_spec


class AdaptiveClipping(NamedTuple):
  """Andrew et al.'s geometric update of the clipping norm towards a quantile.

  Attributes:
    target_quantile: gamma, the fraction of clients that should be unclipped.
    learning_rate: eta_C.
    count_noise: sigma_b, std of the noise on the count of unclipped clients (the paper
      suggests ``expected cohort size / 20``).
  """

  target_quantile: float = 0.5
  learning_rate: float = 0.2
  count_noise: float = 0.0


class PrivateOptState(NamedTuple):
  """The wrapped server optimizer's state plus what the private aggregation carries."""

  inner: optax.OptState
  clip: jax.Array  # float32 scalar: the clipping norm of the next round
  noise_key: jax.Array  # uint32 key data; the round's noise key is fold_in(it, round)


class PrivateShared(NamedTuple):
  """What the clients receive: the usual ``Shared`` fields plus the round's clipping norm and,
  for an encoder with a ``SharedRotation``, the round's rotation key (uint32 key data)."""

  params: Any
  round: jax.Array
  clip: jax.Array
  rotation: jax.Array | None = None


class RotatedUpdate(NamedTuple):
  """A client's decoded upload still in the round's shared rotated basis (``SharedRotation``);
  the server rotates the cohort's sum back once."""

  vector: jax.Array


class PrivateUpdate(NamedTuple):
  """A client's upload: its (clipped, encoded) delta and whether it was left unclipped."""

  delta: Any
  unclipped: jax.Array


def update_noise_multiplier(noise_multiplier: float, adaptive: AdaptiveClipping | None) -> float:
  """The multiplier of the noise on the update sum: z itself, or Andrew et al.'s z_Delta."""
  if adaptive is None or noise_multiplier == 0:
    return float(noise_multiplier)
  if not 2 * adaptive.count_noise > noise_multiplier:
    raise ValueError(
      f"adaptive clipping needs count_noise > noise_multiplier / 2 (got {adaptive.count_noise} and "
      f"{noise_multiplier}): the count's noise takes part of the privacy budget"
    )
  return float((noise_multiplier**-2 - (2 * adaptive.count_noise) ** -2) ** -0.5)


def clip_tree(tree, clip: jax.Array):
  """``tree * min(1, clip / ||tree||)`` and ``||tree||`` (the global L2 norm over leaves)."""
  norm = jnp.sqrt(tree_sq_norm(tree))
  factor = jnp.minimum(1.0, clip / jnp.maximum(norm, 1e-30))
  return jax.tree.map(lambda x: x * factor.astype(x.dtype), tree), norm


def round_key(noise_key: jax.Array, round_: jax.Array) -> jax.Array:
  """The round's key, ``fold_in(noise key, round)``: the noise comes from its ``split``."""
  return jax.random.fold_in(jax.random.wrap_key_data(noise_key), round_)


def rotation_key(noise_key: jax.Array, round_: jax.Array) -> jax.Array:
  """The round's shared rotation (key data): ``fold_in(round key, 1)``, apart from the noise's."""
  return jax.random.key_data(jax.random.fold_in(round_key(noise_key, round_), 1))


def private_aggregation(
  algorithm: Algorithm,
  *,
  clip_norm: float | None = None,
  noise_multiplier: float = 0.0,
  expected_clients: float | None = None,
  adaptive: AdaptiveClipping | None = None,
  encoder: UpdateEncoder | None = None,
  secure_aggregation: secagg_lib.SecAgg | None = None,
  error_feedback: bool = False,
  seed: int = 0,
) -> Algorithm | StatefulAlgorithm:
  """Wraps ``algorithm``'s aggregation with DP clipping and noise, an encoder, and/or SecAgg.

  Args:
    algorithm: an ``Algorithm`` from ``build_algorithm`` (fedavg, fedprox, the FedOpt servers).
    clip_norm: C, the L2 bound of each client's update (the initial one with ``adaptive``);
      ``None`` for no DP (then ``noise_multiplier`` must be 0).
    noise_multiplier: z; the noise on the update sum has std ``z * C``.
    expected_clients: the fixed denominator, the expected number of aggregated clients
      (``q * N`` for Poisson sampling, K for fixed-size rounds). Required with DP.
    adaptive: optional ``AdaptiveClipping``.
    encoder: optional ``UpdateEncoder`` applied to each client's (clipped) update.
    secure_aggregation: optional ``SecAgg`` (fixed-point modular summation).
    error_feedback: keep each client's encoding residual between rounds (needs ``encoder``);
      the result is then a ``StatefulAlgorithm`` (module docstring).
    seed: seeds the noise key (the round's noise comes from ``fold_in(key, round)``).

  Returns:
    An ``Algorithm`` with the same ``engine`` (a ``StatefulAlgorithm`` with ``error_feedback``,
    whose client state is the residual); its ``ServerState.opt_state`` is a
    ``PrivateOptState``. Per client, ``apply``'s diagnostics add ``client_update_norm`` and
    ``client_clipped``; per round ``clip_norm``, ``clipped_fraction`` and ``noise_std`` (the std of
    the noise on the averaged update, ``z_Delta C / E[cohort size]``).

  Example::

    alg = private_aggregation(fedavg(model, optax.sgd(0.1)), clip_norm=1.0, noise_multiplier=1.0,
                              expected_clients=50)
  """
  if not isinstance(algorithm, Algorithm):
    raise TypeError(
      f"private_aggregation wraps a stateless Algorithm (fedavg, fedprox, the FedOpt servers), got "
      f"{type(algorithm).__name__}: algorithms with client states of their own are not wrapped"
    )
  if error_feedback and encoder is None:
    raise ValueError("error feedback needs an encoder (it keeps what the encoder did not send)")
  dp = clip_norm is not None
  if dp:
    if not clip_norm > 0:
      raise ValueError(f"clip_norm must be > 0, got {clip_norm}")
    if not noise_multiplier >= 0:
      raise ValueError(f"noise_multiplier must be >= 0, got {noise_multiplier}")
    if expected_clients is None or not expected_clients > 0:
      raise ValueError(f"DP needs expected_clients > 0 (the fixed denominator), got {expected_clients}")
  elif noise_multiplier or adaptive is not None:
    raise ValueError("noise_multiplier and adaptive clipping need clip_norm")
  z_update = update_noise_multiplier(noise_multiplier, adaptive) if dp else 0.0
  inner_program, inner_update, engine = algorithm.client_program, algorithm.server_update, algorithm.engine
  sa = secure_aggregation
  # Synchronous rounds of a rotated quantizer share one rotation (``encoders.SharedRotation``).
  shared_rot = encoder.shared_rotation if encoder is not None and not error_feedback else None
  fixed_clip = jnp.float32(clip_norm if dp else 0.0)

  def init_client(shared, rng):
    return inner_program.init(shared, rng), jax.random.key_data(rng)

  def step(shared, carry, batch, mask, rng):
    inner, key = carry
    return inner_program.step(shared, inner, batch, mask, rng), key

  def upload(shared, carry, num_examples, residual):
    """The client's ``ClientOutput`` and, with error feedback, its new residual."""
    inner, key = carry
    out = inner_program.finish(shared, inner, num_examples)
    metrics = dict(out.metrics)
    delta, weight = out.update, out.weight.astype(jnp.float32)
    unclipped = jnp.ones((), jnp.float32)
    clip = getattr(shared, "clip", fixed_clip)
    if dp:
      delta, norm = clip_tree(delta, clip)
      unclipped = (norm <= clip).astype(jnp.float32)
      metrics["update_norm"] = norm
      metrics["clipped"] = 1.0 - unclipped
      weight = (weight > 0).astype(jnp.float32)  # each client's weight <= 1: sensitivity C
    new_residual = None
    rotation = getattr(shared, "rotation", None)  # None in async steps and stacked sweeps
    if shared_rot is not None and rotation is not None:  # (never with error feedback: shared_rot)
      # The round's one rotation: the upload stays rotated (its norm is the decoded update's
      # bound: rotating back is orthonormal, dropping the padding only shrinks it).
      flat = ravel_pytree(delta)[0].astype(jnp.float32)
      rot_key = jax.random.wrap_key_data(rotation)
      z = shared_rot.roundtrip(flat, jax.random.fold_in(jax.random.wrap_key_data(key), 1), rot_key)
      if dp:
        z, _ = clip_tree(z, clip)
      delta = RotatedUpdate(z)
    elif encoder is not None:
      if residual is not None:
        delta = jax.tree.map(lambda d, e: d + e.astype(d.dtype), delta, residual)
      sent, _ = apply_encoder(
        encoder, delta, jax.random.fold_in(jax.random.wrap_key_data(key), 1), clip if dp else None
      )
      if residual is not None:
        new_residual = jax.tree.map(lambda v, u: (v - u).astype(jnp.float32), delta, sent)
      delta = sent
    if sa is not None:
      finite = tree_all_finite(delta)
      weight = jnp.where(finite, (weight > 0).astype(jnp.float32), jnp.nan)  # the engine drops NaN weights
      delta = secagg_lib.encode(sa, jax.tree.map(lambda x: jnp.where(finite, x, 0.0), delta))
      unclipped = unclipped.astype(jnp.int32)
    if not (dp or sa is not None):  # an encoder alone: the upload is the plain (decoded) update
      return ClientOutput(delta, weight, metrics), new_residual
    return ClientOutput(PrivateUpdate(delta, unclipped), weight, metrics), new_residual

  def finish(shared, carry, num_examples) -> ClientOutput:
    return upload(shared, carry, num_examples, None)[0]

  program = ClientProgram(init_client, step, finish)

  # Error feedback: the same client work with the residual as the client's state.
  def residual_init(shared):
    return jax.tree.map(lambda p: jnp.zeros(p.shape, jnp.float32), shared.params)

  def init_stateful(shared, rng, residual):
    return init_client(shared, rng), residual

  def step_stateful(shared, carry, batch, mask, rng):
    inner, residual = carry
    return step(shared, inner, batch, mask, rng), residual

  def finish_stateful(shared, carry, num_examples):
    inner, residual = carry
    return upload(shared, inner, num_examples, residual)

  stateful_program = StatefulProgram(init_stateful, step_stateful, finish_stateful, residual_init)

  def init(params) -> ServerState:
    state = algorithm.init(params)
    key = jax.random.key_data(jax.random.key(seed))
    return engine.place_replicated(state._replace(opt_state=PrivateOptState(state.opt_state, fixed_clip, key)))

  @jax.jit
  def server_update(state: ServerState, aggregate: Aggregate) -> ServerState:
    opt = state.opt_state
    if dp or sa is not None:
      update_sum, count = aggregate.update_sum.delta, aggregate.update_sum.unclipped
    else:
      update_sum, count = aggregate.update_sum, None
    if sa is not None:
      update_sum = secagg_lib.decode(sa, update_sum)
      count = count.astype(jnp.float32)
    if isinstance(update_sum, RotatedUpdate):  # rotate the sum back once, for the whole cohort
      flat, unravel = ravel_pytree(state.params)
      rotation = jax.random.wrap_key_data(rotation_key(opt.noise_key, state.round))
      update_sum = unravel(shared_rot.unrotate(update_sum.vector, rotation, flat.shape[0]).astype(flat.dtype))
    weight_sum, clip = aggregate.weight_sum, opt.clip
    if dp:
      update_key, count_key = jax.random.split(round_key(opt.noise_key, state.round))
      leaves, treedef = jax.tree.flatten(update_sum)
      keys = jax.random.split(update_key, len(leaves))
      std = z_update * clip
      leaves = [x + std.astype(x.dtype) * jax.random.normal(k, x.shape, x.dtype) for x, k in zip(leaves, keys)]
      update_sum = jax.tree.unflatten(treedef, leaves)
      weight_sum = jnp.float32(expected_clients)
    inner_state = ServerState(state.params, opt.inner, state.round)
    new = inner_update(inner_state, Aggregate(update_sum, weight_sum, aggregate.num_nonfinite))
    if dp and adaptive is not None:
      noisy_count = count + adaptive.count_noise * jax.random.normal(count_key, (), jnp.float32)
      unclipped_fraction = noisy_count / expected_clients
      clip = clip * jnp.exp(-adaptive.learning_rate * (unclipped_fraction - adaptive.target_quantile))
    return ServerState(new.params, PrivateOptState(new.opt_state, clip, opt.noise_key), new.round)

  rotation_of = jax.jit(rotation_key)

  def shared_of(state: ServerState) -> PrivateShared:
    opt = state.opt_state
    rotation = None if shared_rot is None else rotation_of(opt.noise_key, state.round)
    return PrivateShared(state.params, state.round, opt.clip, rotation)

  def diagnostics(before, cohort, aggregate, per_client, clip_used) -> Deferred:
    base = diagnostics_of(engine, before, cohort, aggregate, per_client)
    if not dp:
      return base

    def compute():
      out = dict(base)
      ok = ~per_client["nonfinite"]
      out["clip_norm"] = float(jax.device_get(clip_used))
      out["clipped_fraction"] = float(np.mean(per_client["clipped"][ok])) if ok.any() else 0.0
      out["noise_std"] = float(z_update * out["clip_norm"] / expected_clients)
      return out

    return Deferred(compute)

  def stats():
    return dict(computed=engine.stats.computed_example_steps, real=engine.stats.real_example_steps)

  def apply(state: ServerState, cohort: Cohort, rng: PRNGKey) -> tuple[ServerState, Mapping[str, Any]]:
    before = stats()
    aggregate, per_client = engine.run(program, shared_of(state), cohort, rng)
    new_state = server_update(state, aggregate)
    return new_state, diagnostics(before, cohort, aggregate, per_client, state.opt_state.clip)

  if not error_feedback:
    return Algorithm(init, apply, program, server_update, engine)

  def apply_stateful(state: ServerState, cohort: Cohort, rng: PRNGKey, residuals, fresh):
    before = stats()
    result = run_stateful(engine, stateful_program, shared_of(state), cohort, rng, residuals, fresh)
    new_state = server_update(state, result.aggregate)
    return new_state, diagnostics(before, cohort, result.aggregate, result.per_client, state.opt_state.clip), result

  def spec(state: ServerState):
    return state_spec(stateful_program, shared_of(state))

  return StatefulAlgorithm(init, apply_stateful, stateful_program, server_update, engine, shared_of, spec)


def expected_cohort(selection: str, clients_per_round: int, num_clients: int, rate: float) -> float:
  """The fixed denominator: ``q N`` for Poisson sampling, else the K aggregated a round."""
  return rate * num_clients if selection == "poisson" else float(clients_per_round)


__all__ = [
  "AdaptiveClipping",
  "PrivateOptState",
  "PrivateShared",
  "PrivateUpdate",
  "RotatedUpdate",
  "clip_tree",
  "expected_cohort",
  "private_aggregation",
  "update_noise_multiplier",
]
