"""Synthetic system traces calibrated to published device measurements.

The generator draws, per client:

* **Compute speed** (ms per training sample, forward pass): lognormal with
  its 5th/95th percentiles at 15/200 ms (median ~55 ms), the spread AI
  Benchmark reports across phones for a small CNN (Ignatov et al., "AI
  Benchmark: All About Deep Learning on Smartphones in 2019",
  arXiv:1910.06663): an order of magnitude between slow and fast devices.
* **Bandwidth** (kbit/s): lognormal with median 6,000 kbit/s and 25% of
  clients under 3,000 kbit/s (sigma = ln 2 / 0.674 ~ 1.03), the WiFi
  throughput distribution of MobiPerf measurements as used by FedScale (Lai
  et al., ICML 2022, arXiv:2105.11367). Upload = download x
  ``up_down_ratio`` (1.0: one bandwidth both ways, as FedScale).
* **Availability** over one week: devices are available mostly while
  charging at night in their own time zone, plus a few short daytime slots,
  so the number of online devices follows a diurnal cycle and on-slots are
  short (minutes to tens of minutes), the shape FedScale reports for its
  136k-device trace (Yang et al., "Characterizing Impacts of Heterogeneity
  in Federated Learning upon Large-Scale Smartphone Data", WWW 2021). Each
  night (with probability ``p_night``) holds a charging session starting
  around ``night_start_h`` local time; within it the device is online in
  ``slots_per_night`` (Poisson) short slots of lognormal length. Each day
  adds ``slots_per_day`` (Poisson) daytime slots. A per-device activity
  factor (lognormal) scales both Poisson means. Times are rounded to whole
  seconds; overlapping slots merge; a slot crossing the end of the week is
  split (see traces/README.md).

Every parameter is a field of `TraceGeneratorConfig`; one seed fixes all.
"""

from __future__ import annotations

import dataclasses
import math

import numpy as np

from fedjaxscale.systems.availability import Availability
from fedjaxscale.systems.traces import SystemTraces

_Z95 = 1.6448536269514722  # standard normal 95th percentile
_Z75 = 0.6744897501960817  # standard normal 75th percentile
DAY = 86_400
WEEK = 7 * DAY


@dataclasses.dataclass(frozen=True)
class TraceGeneratorConfig:
  """Parameters of `generate_traces` (defaults: the shipped traces)."""

  # Compute: lognormal ms/sample with these 5th and 95th percentiles.
  compute_p05_ms: float = 15.0
  compute_p95_ms: float = 200.0
  # Compute is clipped to this range (removes absurd tail draws).
  compute_clip_ms: tuple[float, float] = (5.0, 1000.0)
  # Bandwidth: lognormal kbit/s with this median and this share below
  # `bandwidth_low_kbps`.
  bandwidth_median_kbps: float = 6_000.0
  bandwidth_low_kbps: float = 3_000.0
  bandwidth_low_share: float = 0.25
  # Bandwidth clip (kbit/s).
  bandwidth_clip_kbps: tuple[float, float] = (100.0, 200_000.0)
  # Upload bandwidth = download x this.
  up_down_ratio: float = 1.0
  # Period of the availability trace, seconds.
  period_s: int = WEEK
  # UTC offsets (hours) of devices and their shares (rough shares of
  # smartphone users per zone; they only shape the global diurnal curve).
  tz_offsets_h: tuple[float, ...] = (-8, -6, -5, -3, 0, 1, 2, 3, 5.5, 7, 8, 9)
  tz_shares: tuple[float, ...] = (0.05, 0.05, 0.08, 0.05, 0.05, 0.12, 0.05, 0.05, 0.2, 0.08, 0.17, 0.05)
  # Probability that a device charges (and is eligible) on a given night.
  p_night: float = 0.8
  # Night session start: normal, local hour mean and std.
  night_start_h: float = 23.0
  night_start_std_h: float = 1.5
  # Night session length: normal hours, clipped to `night_len_clip_h`.
  night_len_h: float = 7.0
  night_len_std_h: float = 1.5
  night_len_clip_h: tuple[float, float] = (1.0, 10.0)
  # Mean number of on-slots within a night session (Poisson).
  slots_per_night: float = 3.0
  # Mean number of short daytime on-slots per day (Poisson), placed
  # uniformly in local hours `day_window_h`.
  slots_per_day: float = 1.5
  day_window_h: tuple[float, float] = (7.0, 22.0)
  # On-slot lengths: lognormal, median minutes and sigma.
  night_slot_median_min: float = 20.0
  day_slot_median_min: float = 8.0
  slot_sigma: float = 0.8
  # Shortest on-slot, seconds.
  min_slot_s: int = 60
  # Per-device activity factor: lognormal sigma scaling the slot rates.
  activity_sigma: float = 0.5


def generate_traces(
  num_clients: int, seed: int = 0, config: TraceGeneratorConfig = TraceGeneratorConfig()
) -> SystemTraces:
  """Draws a population's system traces (see the module docstring).

  Args:
    num_clients: population size.
    seed: fixes every draw.
    config: generator parameters.

  Returns:
    `SystemTraces` with float32 speeds and bandwidths and float32 whole-second
    intervals.

  Example:
    >>> traces = generate_traces(1_000, seed=0)
    >>> traces.num_clients
    1000
  """
  c = config
  rng = np.random.default_rng(seed)
  n = int(num_clients)
  sigma_c = math.log(c.compute_p95_ms / c.compute_p05_ms) / (2 * _Z95)
  median_c = math.sqrt(c.compute_p95_ms * c.compute_p05_ms)
  compute = np.clip(median_c * np.exp(sigma_c * rng.standard_normal(n)), *c.compute_clip_ms)
  sigma_b = math.log(c.bandwidth_median_kbps / c.bandwidth_low_kbps) / (
    _Z75 if c.bandwidth_low_share == 0.25 else -_normal_ppf(c.bandwidth_low_share)
  )
  down = np.clip(c.bandwidth_median_kbps * np.exp(sigma_b * rng.standard_normal(n)), *c.bandwidth_clip_kbps)
  up = down * c.up_down_ratio
  availability = _availability(rng, n, c)
  return SystemTraces.create(compute, down, up, availability, source="<generator>")


def _availability(rng, n: int, c: TraceGeneratorConfig) -> Availability:
  days = int(math.ceil(c.period_s / DAY))
  shares = np.asarray(c.tz_shares, np.float64)
  tz_h = np.asarray(c.tz_offsets_h)[rng.choice(len(shares), size=n, p=shares / shares.sum())]
  activity = np.exp(c.activity_sigma * rng.standard_normal(n) - c.activity_sigma**2 / 2)

  # Night sessions, one per (client, day) with probability p_night.
  client = np.repeat(np.arange(n), days)
  day = np.tile(np.arange(days), n)
  keep = rng.random(n * days) < c.p_night
  client, day = client[keep], day[keep]
  start_h = c.night_start_h + c.night_start_std_h * rng.standard_normal(client.size)
  len_h = np.clip(c.night_len_h + c.night_len_std_h * rng.standard_normal(client.size), *c.night_len_clip_h)
  session_start = day * DAY + start_h * 3600 - tz_h[client] * 3600
  session_len = len_h * 3600
  count = rng.poisson(c.slots_per_night * activity[client])
  s_client = np.repeat(client, count)
  s_len = np.minimum(_slot_len(rng, s_client.size, c.night_slot_median_min, c), np.repeat(session_len, count))
  s_start = np.repeat(session_start, count) + rng.random(s_client.size) * (np.repeat(session_len, count) - s_len)

  # Short daytime slots.
  d_count = rng.poisson(np.repeat(c.slots_per_day * activity, days))
  d_client = np.repeat(np.repeat(np.arange(n), days), d_count)
  d_day = np.repeat(np.tile(np.arange(days), n), d_count)
  lo_h, hi_h = c.day_window_h
  d_len = _slot_len(rng, d_client.size, c.day_slot_median_min, c)
  d_start = d_day * DAY - tz_h[d_client] * 3600 + (lo_h + (hi_h - lo_h) * rng.random(d_client.size)) * 3600

  cl = np.concatenate([s_client, d_client])
  start = np.round(np.concatenate([s_start, d_start])).astype(np.int64)
  length = np.round(np.concatenate([s_len, d_len])).astype(np.int64)
  del s_client, d_client, s_start, d_start, s_len, d_len
  return _to_availability(n, cl, start, length, int(c.period_s))


def _slot_len(rng, size, median_min, c) -> np.ndarray:
  return np.maximum(median_min * 60 * np.exp(c.slot_sigma * rng.standard_normal(size)), c.min_slot_s)


def _to_availability(n, client, start, length, period) -> Availability:
  """Wraps slots into [0, period], sorts, merges overlaps; all vectorized."""
  start = np.mod(start, period)
  length = np.minimum(length, period)
  end = start + length
  over = end > period
  # A slot past the end of the period continues at its start.
  client = np.concatenate([client, client[over]])
  start = np.concatenate([start, np.zeros(int(over.sum()), np.int64)])
  end = np.concatenate([np.minimum(end, period), end[over] - period])
  stride = period + 1  # so one client's ends never touch the next's starts
  gstart = client * stride + start
  order = np.argsort(gstart, kind="stable")
  gstart = gstart[order]
  gend = np.maximum.accumulate((client * stride + end)[order])
  del order, start, end, client
  new = np.ones(gstart.size, bool)
  new[1:] = gstart[1:] > gend[:-1]
  last = np.flatnonzero(np.r_[new[1:], True])
  bstart, bend = gstart[new], gend[last]
  bclient = bstart // stride
  counts = np.bincount(bclient, minlength=n)
  offsets = np.concatenate([[0], np.cumsum(counts)]).astype(np.int64)
  starts = (bstart - bclient * stride).astype(np.int32)
  ends = (bend - bclient * stride).astype(np.int32)
  return Availability.from_intervals(offsets, starts, ends, float(period), source="<generator>")


def _normal_ppf(p: float) -> float:
  """Inverse standard normal CDF (Acklam's rational approximation)."""
  a = (
    -3.969683028665376e01,
    2.209460984245205e02,
    -2.759285104469687e02,
    1.383577518672690e02,
    -3.066479806614716e01,
    2.506628277459239e00,
  )
  b = (-5.447609879822406e01, 1.615858368580409e02, -1.556989798598866e02, 6.680131188771972e01, -1.328068155288572e01)
  cc = (
    -7.784894002430293e-03,
    -3.223964580411365e-01,
    -2.400758277161838e00,
    -2.549732539343734e00,
    4.374664141464968e00,
    2.938163982698783e00,
  )
  d = (7.784695709041462e-03, 3.224671290700398e-01, 2.445134137142996e00, 3.754408661907416e00)
  if p < 0.02425:
    q = math.sqrt(-2 * math.log(p))
    return (((((cc[0] * q + cc[1]) * q + cc[2]) * q + cc[3]) * q + cc[4]) * q + cc[5]) / (
      (((d[0] * q + d[1]) * q + d[2]) * q + d[3]) * q + 1
    )
  if p > 1 - 0.02425:
    return -_normal_ppf(1 - p)
  q = p - 0.5
  r = q * q
  return (
    (((((a[0] * r + a[1]) * r + a[2]) * r + a[3]) * r + a[4]) * r + a[5])
    * q
    / (((((b[0] * r + b[1]) * r + b[2]) * r + b[3]) * r + b[4]) * r + 1)
  )
