"""System traces and the latency model (host side, NumPy only: no JAX).

Per-client compute speed, bandwidth and availability of a population, our own
trace files and FedScale's pickles, a calibrated generator, and the latency
model that turns them into download/compute/upload seconds.
"""

from fedjaxscale.systems.availability import Availability
from fedjaxscale.systems.errors import TraceError
from fedjaxscale.systems.fedscale import load_fedscale_traces, read_fedscale_behavior, read_fedscale_capacity
from fedjaxscale.systems.generator import TraceGeneratorConfig, generate_traces
from fedjaxscale.systems.io import load_metadata, load_traces, save_traces
from fedjaxscale.systems.latency import Latency, LatencyModel, model_bits
from fedjaxscale.systems.traces import SystemTraces

__all__ = [
  "Availability",
  "Latency",
  "LatencyModel",
  "SystemTraces",
  "TraceError",
  "TraceGeneratorConfig",
  "generate_traces",
  "load_fedscale_traces",
  "load_metadata",
  "load_traces",
  "model_bits",
  "read_fedscale_behavior",
  "read_fedscale_capacity",
  "save_traces",
]
