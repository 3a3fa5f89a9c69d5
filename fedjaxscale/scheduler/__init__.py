"""The host-side round scheduler (NumPy only: no JAX).

A simulated clock, selection policies (uniform among online clients, Oort),
the synchronous planner (over-commitment, deadlines, drop-outs) and the
asynchronous FedBuff planner. Plans are plain NumPy arrays; planner state
round-trips exactly through ``state_dict()`` / ``load_state_dict()``.
"""

from fedjaxscale.scheduler.clock import Clock
from fedjaxscale.scheduler.fedbuff import AsyncConfig
from fedjaxscale.scheduler.fedbuff import AsyncPlanner
from fedjaxscale.scheduler.oort import OortSelection
from fedjaxscale.scheduler.plans import AsyncPlan
from fedjaxscale.scheduler.plans import Status
from fedjaxscale.scheduler.plans import SyncPlan
from fedjaxscale.scheduler.rng import make_rng
from fedjaxscale.scheduler.rng import rng_from_state_dict
from fedjaxscale.scheduler.rng import rng_state_dict
from fedjaxscale.scheduler.selection import SelectionPolicy
from fedjaxscale.scheduler.selection import UniformSelection
from fedjaxscale.scheduler.selection import sample_online
from fedjaxscale.scheduler.sync import SyncConfig
from fedjaxscale.scheduler.sync import SyncPlanner

__all__ = [
    'AsyncConfig',
    'AsyncPlan',
    'AsyncPlanner',
    'Clock',
    'OortSelection',
    'SelectionPolicy',
    'Status',
    'SyncConfig',
    'SyncPlan',
    'SyncPlanner',
    'UniformSelection',
    'make_rng',
    'rng_from_state_dict',
    'rng_state_dict',
    'sample_online',
]
