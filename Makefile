# Set-up and everyday commands. Each target creates .venv from nothing when it is missing.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
PIP_INSTALL := $(BIN)/python -m pip install --quiet --disable-pip-version-check

.PHONY: demo test test-fast lint clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(PIP_INSTALL) --upgrade pip

$(VENV)/.installed: pyproject.toml constraints.txt | $(BIN)/python
	$(PIP_INSTALL) -c constraints.txt -e ".[dev]"
	touch $@

## demo: train Dcam offline on the embedded texture dataset, print metrics, write heatmaps (a few minutes on 2 CPUs)
demo: $(VENV)/.installed
	HF_HUB_OFFLINE=1 $(BIN)/anomalib-dcam demo --output results/demo

## test: the whole test suite (offline, CPU)
test: $(VENV)/.installed
	HF_HUB_OFFLINE=1 $(BIN)/python -m pytest

## test-fast: everything but the tests marked slow (anomalib CLI subprocesses, QAT, DDP, benchmark grid, train_speed)
test-fast: $(VENV)/.installed
	HF_HUB_OFFLINE=1 $(BIN)/python -m pytest -m "not slow"

lint: $(VENV)/.installed
	$(BIN)/ruff check src tests benchmarks
	$(BIN)/ruff format --check src tests benchmarks

clean:
	rm -rf $(VENV) results .pytest_cache
