"""Federated datasets on disk, the built-in Synthetic data, and cohort assembly."""

from fedjaxscale.data.cohort import gather_cohort, make_cohort, padding_report, steps_for
from fedjaxscale.data.dataset import (
  DatasetError,
  FederatedDataset,
  open_splits,
  write_dataset,
  write_dataset_from_clients,
)
from fedjaxscale.data.shapes import plan_shapes
from fedjaxscale.data.synthetic import make_synthetic, write_synthetic

__all__ = [
  "DatasetError",
  "FederatedDataset",
  "gather_cohort",
  "make_cohort",
  "make_synthetic",
  "open_splits",
  "padding_report",
  "plan_shapes",
  "steps_for",
  "write_dataset",
  "write_dataset_from_clients",
  "write_synthetic",
]
