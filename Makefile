# bnserve: two commands do all the set-up on a fresh machine with python3 (>= 3.10).
#   make serve   create .venv, install the serving dependencies, train the default model if models/ has
#                none, and serve models/ on http://127.0.0.1:8000
#   make test    create .venv, install everything (training, plots, dev tools) and run the whole test suite
# Both are idempotent: a second run reinstalls nothing unless pyproject.toml changed.
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
PIP    := $(BIN)/python -m pip --disable-pip-version-check --quiet

.PHONY: serve test train lint bench experiments docker-smoke clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(PIP) install --upgrade pip

$(VENV)/.serve-deps: pyproject.toml | $(BIN)/python
	$(PIP) install -e .
	@touch $@

$(VENV)/.train-deps: pyproject.toml | $(BIN)/python
	$(PIP) install -e '.[train]'
	@touch $@ $(VENV)/.serve-deps

$(VENV)/.dev-deps: pyproject.toml | $(BIN)/python
	$(PIP) install -e '.[dev]'
	@touch $@ $(VENV)/.train-deps $(VENV)/.serve-deps

serve: $(VENV)/.serve-deps
	@ls models/*/*/model.onnx >/dev/null 2>&1 || $(MAKE) --no-print-directory train
	$(BIN)/python -m service

train: $(VENV)/.train-deps
	@echo "make train: trains the default model and writes it as a new version, models/digits/<highest + 1>/ (older versions stay)"
	$(BIN)/python -m training

test: $(VENV)/.dev-deps
	$(BIN)/python -m pytest

lint: $(VENV)/.dev-deps
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy

bench: $(VENV)/.dev-deps
	$(BIN)/python -m benchmarks.train_throughput
	$(BIN)/python -m benchmarks.inference
	$(BIN)/python -m benchmarks.serve

# One BLAS thread: the matrices are small (threads only add contention) and the report's numbers reproduce.
experiments: $(VENV)/.dev-deps
	OPENBLAS_NUM_THREADS=1 OMP_NUM_THREADS=1 $(BIN)/python -m experiments

docker-smoke:
	../shared/tools/docker-smoke

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache .mypy_cache
