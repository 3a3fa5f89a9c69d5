# fedjaxscale: the two commands of the README, plus benchmarks.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
# Tests run on the CPU with small shapes; multi-device tests force host devices themselves.
TEST_ENV := JAX_PLATFORMS=cpu XLA_PYTHON_CLIENT_PREALLOCATE=false
PYTEST_ARGS ?=

.PHONY: demo test lint format install install-test bench clean

$(VENV)/.installed: setup.cfg pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e .
	touch $@

$(VENV)/.installed-test: $(VENV)/.installed
	$(PY) -m pip install -q -e '.[test]'
	touch $@

install: $(VENV)/.installed
install-test: $(VENV)/.installed-test

demo: install
	$(VENV)/bin/fedjaxscale --config=experiments/configs/synthetic.py --workdir=runs/demo --overwrite

test: install-test lint
	$(TEST_ENV) $(PY) -m pytest -n 2 $(PYTEST_ARGS)

# ruff's lint rules and formatter, configured in pyproject.toml (2-space indents, double quotes).
lint: install-test
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

format: install-test
	$(VENV)/bin/ruff check --fix .
	$(VENV)/bin/ruff format .

bench: install
	$(PY) benchmarks/engine.py
	$(PY) benchmarks/scheduler.py
	$(PY) benchmarks/devices.py

clean:
	rm -rf $(VENV) build *.egg-info .pytest_cache .hypothesis
