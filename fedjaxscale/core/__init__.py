"""Types, pytree math and shape buckets every other layer builds on."""

from fedjaxscale.core.buckets import bucket_size, bucket_sizes, coarse_bucket_size
from fedjaxscale.core.cohort import IDLE, Cohort, CohortPart, chunk_sizes, padded_num_lanes
from fedjaxscale.core.tree import (
  tree_add,
  tree_all_finite,
  tree_num_params,
  tree_size_bytes,
  tree_sq_norm,
  tree_sub,
  tree_where,
  tree_zeros_like,
)
from fedjaxscale.core.types import Array, Batch, Params, PRNGKey, PyTree

__all__ = [
  "IDLE",
  "Array",
  "Batch",
  "Cohort",
  "CohortPart",
  "PRNGKey",
  "Params",
  "PyTree",
  "bucket_size",
  "bucket_sizes",
  "chunk_sizes",
  "coarse_bucket_size",
  "padded_num_lanes",
  "tree_add",
  "tree_all_finite",
  "tree_num_params",
  "tree_size_bytes",
  "tree_sq_norm",
  "tree_sub",
  "tree_where",
  "tree_zeros_like",
]
