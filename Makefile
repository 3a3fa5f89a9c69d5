# fedjaxscale: the two commands of the README, plus benchmarks.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
# Tests run on the CPU with small shapes; multi-device tests force host devices themselves.
TEST_ENV := JAX_PLATFORMS=cpu XLA_PYTHON_CLIENT_PREALLOCATE=false
PYTEST_ARGS ?=

.PHONY: demo test lint format install install-test bench bench-peers bench-gpu clean

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
	$(TEST_ENV) $(PY) -m pytest -n 2 --durations=25 $(PYTEST_ARGS)

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

# Peers live in their own virtualenv, never dependencies of the package.
PEERS_VENV := benchmarks/.venv-peers
$(PEERS_VENV)/.installed:
	test -x $(PEERS_VENV)/bin/python || $(PYTHON) -m venv $(PEERS_VENV)
	$(PEERS_VENV)/bin/pip install -q torch==2.13.0 pfl==0.6.0
	touch $@

# fedjaxscale beside a PyTorch loop and pfl: benchmarks/results/peers-cpu.md
bench-peers: install $(PEERS_VENV)/.installed
	$(PY) benchmarks/peers.py

# On a machine with a GPU (<= 8 minutes): benchmarks/results/gpu-<device>.md
bench-gpu: install
	$(PY) benchmarks/gpu.py

clean:
	rm -rf $(VENV) build *.egg-info .pytest_cache .hypothesis
