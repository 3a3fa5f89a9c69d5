"""Dependencies point one way (DESIGN.md), checked on the source: no layer imports upward.

The engine sits below the algorithms: an algorithm's ``apply`` maps its client program over the
cohort with the engine, so ``algorithms`` imports ``engine`` and never the reverse.
"""

import ast
import pathlib

import pytest

PACKAGE = pathlib.Path(__file__).resolve().parents[1] / "fedjaxscale"
ALLOWED = {
  "core": {"core"},
  "models": {"core", "models"},
  "engine": {"core", "models", "engine"},
  "algorithms": {"core", "models", "engine", "algorithms"},
  "data": {"core", "data"},
  "systems": {"systems"},
  "scheduler": {"systems", "scheduler"},
  "state": {"core", "state"},
}
NO_JAX = {"systems", "scheduler", "data"}


def imports(path):
  tree = ast.parse(path.read_text())
  for node in ast.walk(tree):
    if isinstance(node, ast.Import):
      yield from (a.name for a in node.names)
    elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
      yield node.module


@pytest.mark.parametrize("layer", sorted(ALLOWED))
def test_layer_imports_only_layers_below(layer):
  files = sorted((PACKAGE / layer).glob("*.py"))
  assert files, layer
  for path in files:
    for name in imports(path):
      parts = name.split(".")
      if parts[0] == "fedjaxscale" and len(parts) > 1:
        assert parts[1] in ALLOWED[layer], f"{path.name} ({layer}) imports {name}"
      if layer in NO_JAX and layer != "data":
        assert parts[0] not in {"jax", "jaxlib", "flax", "optax"}, f"{path.name} ({layer}) imports {name}"


def test_data_layout_and_synthetic_are_numpy_only():
  for name in ("dataset.py", "synthetic.py"):
    for module in imports(PACKAGE / "data" / name):
      assert module.split(".")[0] not in {"jax", "flax", "optax"}, f"data/{name} imports {module}"
