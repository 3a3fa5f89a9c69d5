"""The host-side round scheduler (NumPy only: no JAX).

A simulated clock, selection policies (uniform among online clients, Oort, Poisson),
the synchronous planner (over-commitment, deadlines, drop-outs) and the
asynchronous FedBuff planner. Plans are plain NumPy arrays; planner state
round-trips exactly through ``state_dict()`` / ``load_state_dict()``.
"""

from fedjaxscale.scheduler.clock import Clock
from fedjaxscale.scheduler.fedbuff import AsyncConfig, AsyncPlanner
from fedjaxscale.scheduler.oort import OortSelection
from fedjaxscale.scheduler.plans import AsyncPlan, Status, SyncPlan
from fedjaxscale.scheduler.poisson import PoissonSelection
from fedjaxscale.scheduler.rng import make_rng, rng_from_state_dict, rng_state_dict
from fedjaxscale.scheduler.selection import SelectionPolicy, UniformSelection, sample_online
from fedjaxscale.scheduler.sync import SyncConfig, SyncPlanner

__all__ = [
  "AsyncConfig",
  "AsyncPlan",
  "AsyncPlanner",
  "Clock",
  "OortSelection",
  "PoissonSelection",
  "SelectionPolicy",
  "Status",
  "SyncConfig",
  "SyncPlan",
  "SyncPlanner",
  "UniformSelection",
  "make_rng",
  "rng_from_state_dict",
  "rng_state_dict",
  "sample_online",
]
