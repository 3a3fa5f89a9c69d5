"""How one device runs its lanes inside the compiled round: the execution strategies.

A strategy names how the lanes a device holds are mapped, and optionally how convolutions are
traced:

    strategy := "auto" | lanes ["+" conv]
    lanes    := "vmap"        all lanes at once (``jax.vmap``)
              | "map"         one lane after another (a ``lax.scan`` over lanes; lanes share no
                              weights, so convolutions stay ordinary convolutions)
              | "map:" k      ``k`` lanes at a time, ``vmap``ped, the groups one after another
    conv     := "lax" | "patches"   ``models.conv.conv_implementation`` while tracing (default:
                              whatever the caller's context says, i.e. ``"lax"``)

e.g. ``"vmap"``, ``"vmap+patches"``, ``"map"``, ``"map:4+patches"``. Every strategy computes the
same sums and per-client metrics (up to float rounding: lanes are added in another order).
``"map"`` also holds one lane's intermediate values at a time instead of every lane's.
"""

import contextlib
import importlib
import re
from typing import NamedTuple

import jax
import jax.numpy as jnp

from fedjaxscale.engine.program import accumulate

AUTO = "auto"
CONV_IMPLEMENTATIONS = ("lax", "patches")
_GRAMMAR = re.compile(r"^(vmap|map)(?::(\d+))?(?:\+(\w+))?$")


class Strategy(NamedTuple):
  """A parsed strategy: ``lanes`` ('vmap' or 'map'), ``batch`` (lanes per group, for 'map'), ``conv``."""

  lanes: str
  batch: int = 1
  conv: str | None = None

  def __str__(self) -> str:
    name = self.lanes if self.lanes == "vmap" or self.batch == 1 else f"map:{self.batch}"
    return name if self.conv is None else f"{name}+{self.conv}"

  def trace_context(self):
    """The context to trace this strategy's program in (the convolution implementation)."""
    if self.conv is None or (self.conv == "lax" and conv_module() is None):
      return contextlib.nullcontext()
    return conv_module().conv_implementation(self.conv)


def conv_module():
  """``fedjaxscale.models.conv`` when the installed models have it, else None."""
  try:
    return importlib.import_module("fedjaxscale.models.conv")
  except ImportError:
    return None


def parse_strategy(text: str) -> Strategy | None:
  """``Strategy`` for ``text`` (see the module docstring), or None for ``"auto"``.

  Raises:
    ValueError: naming ``text`` when it is not in the grammar.
  """
  if text == AUTO:
    return None
  match = _GRAMMAR.match(text) if isinstance(text, str) else None
  if match is None:
    raise ValueError(
      f"unknown engine strategy {text!r}; expected 'auto', 'vmap', 'map' or 'map:<k>', optionally followed by "
      f"'+lax' or '+patches' (e.g. 'map:4+patches')"
    )
  lanes, k, conv = match.groups()
  if lanes == "vmap" and k is not None:
    raise ValueError(f"unknown engine strategy {text!r}: 'vmap' takes no ':<k>' (use 'map:<k>')")
  batch = int(k) if k is not None else 1
  if batch < 1:
    raise ValueError(f"engine strategy {text!r}: k in 'map:<k>' must be >= 1")
  if conv is not None and conv not in CONV_IMPLEMENTATIONS:
    raise ValueError(
      f"engine strategy {text!r}: unknown convolution implementation {conv!r}; expected one of {CONV_IMPLEMENTATIONS}"
    )
  if conv == "patches" and conv_module() is None:
    raise ValueError(f"engine strategy {text!r} needs fedjaxscale.models.conv, which this installation lacks")
  return Strategy(lanes, batch, conv)


def candidates(platform: str, lanes_per_device: int, has_conv: bool) -> list[Strategy]:
  """The strategies ``"auto"`` times, for a chunk of ``lanes_per_device`` lanes on each device.

  Kept short (each costs a compile): on accelerators, ``vmap`` fills the chip and usually wins;
  on CPU, running lanes one after another can beat ``vmap`` (XLA:CPU turns per-lane convolution
  weights into slow grouped convolutions) and a group of a few lanes can beat both. Convolution
  variants only for programs that convolve, and only when ``models.conv`` exists; ``map`` variants
  that would equal ``vmap`` (one lane, or groups as large as the chunk) are left out.
  """
  patches = has_conv and conv_module() is not None
  if platform == "cpu":
    lanes = [Strategy("vmap"), Strategy("map", 1), Strategy("map", 4)]
  else:
    lanes = [Strategy("vmap"), Strategy("map", 8)]
  out = []
  for s in lanes:
    if s.lanes == "map" and (lanes_per_device <= 1 or (s.batch > 1 and s.batch >= lanes_per_device)):
      continue
    if not has_conv:
      out.append(s)
    elif s.lanes == "vmap":
      out += [s] + ([s._replace(conv="patches")] if patches else [])
    elif patches or platform != "cpu":
      # XLA:CPU runs lax convolutions inside a loop body (the map over lanes) tens of times
      # slower than outside one (measured: FEMNIST CNN 0.6 GFLOP/s against 24 under vmap), so
      # on CPU a sequential map only convolves as patches x matmul.
      out.append(s._replace(conv="patches") if patches else s)
  return out


def map_lanes(lane_fn, strategy: Strategy, xs, zero):
  """Runs ``lane_fn`` over the leading (lane) axis of ``xs`` as ``strategy`` says.

  Args:
    lane_fn: one lane's inputs -> ``(aggregate, metrics, nonfinite)``, the lane's contribution to
      the sums and its per-lane (or per-step) outputs.
    strategy: how to map.
    xs: the device's lanes (a pytree with a leading lane axis).
    zero: an aggregate of zeros (the running sum's start, for sequential strategies).

  Returns:
    ``(sum of the lanes' aggregates, stacked metrics, stacked nonfinite)``.
  """
  n = jax.tree.leaves(xs)[0].shape[0]
  k = strategy.batch

  def vmapped(x):
    acc, metrics, nonfinite = jax.vmap(lane_fn)(x)
    return jax.tree.map(lambda a: a.sum(0), acc), metrics, nonfinite

  if strategy.lanes == "vmap" or n <= 1 or (k > 1 and k >= n):
    return vmapped(xs)
  groups, rest = divmod(n, k)

  def body(total, x):
    if k == 1:  # no vmap at all: the lane's convolutions keep their own weights
      acc, metrics, nonfinite = lane_fn(jax.tree.map(lambda a: a[0], x))
      metrics, nonfinite = jax.tree.map(lambda a: a[None], (metrics, nonfinite))
    else:
      acc, metrics, nonfinite = vmapped(x)
    return accumulate(total, acc), (metrics, nonfinite)

  head = jax.tree.map(lambda a: a[: groups * k].reshape((groups, k) + a.shape[1:]), xs)
  total, outs = jax.lax.scan(body, zero, head)
  outs = jax.tree.map(lambda a: a.reshape((groups * k,) + a.shape[2:]), outs)
  if rest:
    acc, *tail = vmapped(jax.tree.map(lambda a: a[groups * k :], xs))
    total = accumulate(total, acc)
    outs = jax.tree.map(lambda a, b: jnp.concatenate([a, b]), outs, tuple(tail))
  return total, outs[0], outs[1]


def has_primitive(jaxpr, name: str) -> bool:
  """Whether ``jaxpr`` (or any jaxpr nested in its equations' parameters) applies primitive ``name``."""
  stack, seen = [jaxpr], set()
  while stack:
    j = stack.pop()
    j = getattr(j, "jaxpr", j)  # ClosedJaxpr -> Jaxpr
    if id(j) in seen or not hasattr(j, "eqns"):
      continue
    seen.add(id(j))
    for eqn in j.eqns:
      if eqn.primitive.name == name:
        return True
      for value in eqn.params.values():
        items = value if isinstance(value, tuple | list) else (value,)
        stack.extend(v for v in items if hasattr(v, "eqns") or hasattr(v, "jaxpr"))
  return False
