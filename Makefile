# The project's entry points. `make help` lists them.
SHELL := /bin/bash
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.DEFAULT_GOAL := help

help: ## List the targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  make %-9s %s\n", $$1, $$2}'

$(STAMP): pyproject.toml
	@test -x $(PY) || python3 -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[dev]'
	@touch $(STAMP)

install: $(STAMP) ## Create .venv and install the project with its dev extras

tools: ## Install Prometheus, Chromium and chromedriver for the tests, if missing
	@command -v prometheus >/dev/null && command -v promtool >/dev/null || { \
	  echo "installing Debian's prometheus package (needed by the observability tests)"; \
	  SUDO=$$( [ "$$(id -u)" -eq 0 ] || echo sudo ); \
	  $$SUDO apt-get install -y --no-install-recommends prometheus >/dev/null 2>&1 || \
	  { $$SUDO apt-get update >/dev/null && $$SUDO apt-get install -y --no-install-recommends prometheus >/dev/null; }; \
	  command -v promtool >/dev/null || { echo "could not install prometheus: run 'apt-get install prometheus'"; exit 1; }; }
	@command -v chromium >/dev/null && command -v chromedriver >/dev/null || { \
	  echo "installing Debian's chromium and chromium-driver packages (needed by the status page's browser test)"; \
	  SUDO=$$( [ "$$(id -u)" -eq 0 ] || echo sudo ); \
	  $$SUDO apt-get install -y --no-install-recommends chromium chromium-driver >/dev/null 2>&1 || \
	  { $$SUDO apt-get update >/dev/null && $$SUDO apt-get install -y --no-install-recommends chromium chromium-driver >/dev/null; }; \
	  command -v chromedriver >/dev/null || { echo "could not install chromium: run 'apt-get install chromium chromium-driver'"; exit 1; }; }

lint: $(STAMP) ## ruff (lint and format check) and mypy on pipeline/
	$(VENV)/bin/ruff check pipeline workers tests bench
	$(VENV)/bin/ruff format --check pipeline workers tests bench
	$(VENV)/bin/mypy pipeline

test: $(STAMP) tools lint ## Lint, then the whole test suite (every tier); what CI runs
	$(VENV)/bin/pytest -q

test-fast: $(STAMP) ## The inner loop: engine, real data, store on a real Redis (no broker)
	$(VENV)/bin/pytest -q -m "unit or fidelity or redis"

demo: $(STAMP) ## Run the main job end to end on embedded services
	$(VENV)/bin/unlearn demo

bench: $(STAMP) ## Run the benchmarks and write BENCHMARKS.md
	$(PY) -m bench.run --output BENCHMARKS.md

clean: ## Remove the virtual environment and caches
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache *.egg-info

.PHONY: help install tools lint test test-fast demo bench clean
