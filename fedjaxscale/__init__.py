"""fedjaxscale: cross-device federated learning simulation at cohort scale.

The device half (``models``, ``algorithms``, ``engine``, ``data``) runs a whole cohort's local
training as one compiled JAX program; the host half (``systems``, ``scheduler``) replays device
traces on a simulated clock with NumPy alone. Importing this package imports neither: import the
subpackage you use, e.g. ``from fedjaxscale import algorithms``.
"""

__version__ = "0.1.0"

__all__ = [
  "algorithms",
  "core",
  "data",
  "engine",
  "models",
  "scheduler",
  "systems",
  "training",
]
