# Two commands for a newcomer: `make demo` and `make test`. Both create .venv when missing.
# `make test-slow` runs the long scenarios (full crash trials, the large fuzz budget, load cases).
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
DEMO_DIR := demo
# pytest-xdist workers: one more than the cores, since many tests wait on sockets, emulated
# latency and service ticks (on 2 cores, 3 workers take 187 s where 2 take 242 s).
WORKERS ?= $(shell echo $$(( $$(nproc) + 1 )))
# uv installs the project and its dependencies in a fraction of pip's time (parallel downloads
# and installs), which matters to a `make test` on a fresh clone; pip only installs uv.
INSTALL := $(BIN)/uv pip install --quiet --python $(BIN)/python --compile-bytecode

.PHONY: demo test test-slow lint typecheck pytest clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --disable-pip-version-check 'uv>=0.4'

# Stamp files: reinstall only when pyproject.toml changes.
$(VENV)/.installed: $(BIN)/python pyproject.toml
	$(INSTALL) -e .
	touch $@

$(VENV)/.installed-dev: $(BIN)/python pyproject.toml
	$(INSTALL) -e '.[dev]'
	touch $@ $(VENV)/.installed

demo: $(VENV)/.installed
	DEMO_DIR=$(DEMO_DIR) $(BIN)/python examples/demo.py

lint: $(VENV)/.installed-dev
	$(BIN)/ruff check src tests bench examples scripts
	$(BIN)/ruff format --check src tests bench examples scripts
	$(BIN)/lint-imports --no-cache

typecheck: $(VENV)/.installed-dev
	$(BIN)/mypy

pytest: $(VENV)/.installed-dev
	$(BIN)/pytest -n $(WORKERS) -m "not slow"

# mypy runs beside pytest: it is one process on one core while the tests wait on sockets.
test: lint
	$(MAKE) --no-print-directory -j2 typecheck pytest

test-slow: $(VENV)/.installed-dev
	$(BIN)/pytest -n $(WORKERS) -m slow

clean:
	rm -rf $(VENV) $(DEMO_DIR) .pytest_cache .mypy_cache .ruff_cache .hypothesis
