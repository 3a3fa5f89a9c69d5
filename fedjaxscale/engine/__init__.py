"""The cohort executor: ``vmap`` + ``shard_map`` over a ``clients`` mesh, reduced on device."""

from fedjaxscale.engine.executor import (BACKENDS, CLIENTS, Aggregate, ClientError, ClientFn, ClientInput,
                                         ClientOutput, Engine, EngineStats, default_mesh)

__all__ = [
    "Aggregate", "BACKENDS", "CLIENTS", "ClientError", "ClientFn", "ClientInput", "ClientOutput", "Engine",
    "EngineStats", "default_mesh",
]
