"""The cohort executor: ``vmap`` + ``shard_map`` over a ``clients`` mesh, reduced on device."""

from fedjaxscale.engine.evaluation import EvalResult, Evaluator
from fedjaxscale.engine.executor import (
  BACKENDS,
  CLIENTS,
  Aggregate,
  ClientError,
  ClientOutput,
  ClientProgram,
  Engine,
  EngineStats,
  default_mesh,
  run_client,
)

__all__ = [
  "BACKENDS",
  "CLIENTS",
  "Aggregate",
  "ClientError",
  "ClientOutput",
  "ClientProgram",
  "Engine",
  "EngineStats",
  "EvalResult",
  "Evaluator",
  "default_mesh",
  "run_client",
]
