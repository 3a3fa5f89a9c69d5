"""Typing aliases shared by every layer."""

from collections.abc import Mapping
from typing import Any

import jax
import numpy as np

Params = Any  # A pytree of arrays: a model's parameters.
PyTree = Any
PRNGKey = jax.Array
Array = jax.Array | np.ndarray
Batch = Mapping[str, Array]  # Feature name -> array with a leading example axis.
