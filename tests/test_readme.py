"""The README's code examples run as written (the front door stays true)."""

import os
import pathlib
import re

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]


def python_blocks():
  text = (ROOT / "README.md").read_text()
  return re.findall(r"```python\n(.*?)```", text, flags=re.S)


@pytest.mark.parametrize("index", range(len(python_blocks())))
def test_readme_block_runs(index, monkeypatch):
  monkeypatch.chdir(ROOT)  # examples name repository paths such as traces/
  code = python_blocks()[index]
  exec(compile(code, f"README.md block {index}", "exec"), {"__name__": "readme"})
  assert os.getcwd() == str(ROOT)
