# robustlab — `make demo` runs the main job, `make test` is what CI runs.
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
PIP    := $(VENV)/bin/pip
# The CPU build of PyTorch, pinned: it is served locally on the project machines and installs
# without pulling the CUDA wheels.
TORCH  := torch==2.13.0

.PHONY: install dev demo test lint bench mutation clean

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PIP) install -q --upgrade pip
	$(PIP) install -q "$(TORCH)"
	$(PIP) install -q -e .
	touch $@

$(VENV)/.dev-installed: $(VENV)/.installed
	$(PIP) install -q -e ".[dev]"
	touch $@

install: $(VENV)/.installed

dev: $(VENV)/.dev-installed

demo: install
	$(VENV)/bin/robustlab demo --out runs/demo

lint: dev
	$(VENV)/bin/ruff check src tests bench tools

test: dev lint
	$(VENV)/bin/pytest

bench: install
	$(PY) bench/attack_speed.py

# Mutation testing (not in CI: tens of minutes a package). PKG=certify|attacks|training/methods|losses,
# one package at a time with only its tests; the summary lands in docs/quality/.
PKG ?= certify attacks training/methods losses
mutation: dev
	$(PIP) install -q -e ".[quality]"
	$(PY) tools/mutation.py $(PKG)

clean:
	rm -rf $(VENV) runs .pytest_cache .ruff_cache
