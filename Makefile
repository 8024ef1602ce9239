# Two commands on a fresh machine: `make serve` and `make test`.
SHELL := /bin/bash
# The Triton Python-backend stub loads the system's shared libpython3.X, so the venv that Triton
# runs in must come from the interpreter owning it (a venv of pyenv's 3.11.7 breaks `import ssl` in
# the stubs, Debian's libpython being 3.11.2): pick-python.py finds it
# (Debian 12: /usr/bin/python3.11, not pyenv's), or set PYTHON=/path/to/python3.X.
PYTHON ?= $(shell python3 tools/pick-python.py)
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
ARTIFACTS ?= artifacts
PRESET ?= tiny
PYTEST_ARGS ?= --durations=25

.PHONY: venv test test-fast synth-tiny synth-full clean help

help:
	@echo "make serve   set up, build and serve (CHECKPOINT=dir-or-repo-id to choose the weights)"
	@echo "make test    set up and run the test suite"
	@echo "make test-fast   the tests that start no server (a few minutes)"

venv: $(STAMP)

$(STAMP): pyproject.toml client/pyproject.toml
	@test -n "$(PYTHON)" && test -x "$(PYTHON)" || { echo "error: no Python to build the venv from (see the lines above); install one with its shared libpython, e.g. apt-get install python3.11 python3.11-venv libpython3.11, or set PYTHON=/path/to/python3.X"; exit 1; }
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q "numpy<2" torch==2.13.0
	$(BIN)/pip install -q -e ./client -e ".[build,serve,dev]"
	touch $(STAMP)

test: $(STAMP)
	$(BIN)/python -m pytest -q $(PYTEST_ARGS)

# the tests that start no server and build no engine: minutes, for fast feedback
test-fast: $(STAMP)
	$(BIN)/python -m pytest -q -m "not server and not slow" $(PYTEST_ARGS)

synth-tiny: $(STAMP)
	$(BIN)/jina-triton synth --preset tiny --out $(ARTIFACTS)/checkpoints/synthetic-tiny

synth-full: $(STAMP)
	$(BIN)/jina-triton synth --preset full --out $(ARTIFACTS)/checkpoints/synthetic-full

clean:
	rm -rf $(VENV) $(ARTIFACTS)

# CHECKPOINT=dir-or-repo-id picks the weights; default: the real model from the
# HF cache/hub, else a SYNTHETIC full-size replica (with a loud banner). TARGET=auto serves the
# cuda target where a CUDA GPU is visible, else cpu. The gateway listens on GATEWAY_HOST:8080.
CHECKPOINT ?=
TARGET ?= auto
PRECISION ?=
TASKS ?=
GATEWAY_HOST ?= 127.0.0.1
.PHONY: serve
serve: $(STAMP)
	$(BIN)/jina-triton up --workdir $(ARTIFACTS) --target $(TARGET) --gateway-host $(GATEWAY_HOST) \
		$(if $(PRECISION),--precision $(PRECISION)) $(if $(CHECKPOINT),--checkpoint $(CHECKPOINT)) \
		$(if $(TASKS),--tasks $(TASKS))

# Throughput: bare engine vs served ensemble vs reference path, full-size SYNTHETIC replica.
BENCH_ARGS ?=
.PHONY: bench
bench: $(STAMP)
	$(BIN)/jina-triton bench --preset full --out $(ARTIFACTS)/bench $(BENCH_ARGS)

# The newest bench run's report into README.md (between its bench-report markers).
.PHONY: bench-readme
bench-readme: $(STAMP)
	$(BIN)/jina-triton bench-readme --out $(ARTIFACTS)/bench

# The cpu serving defaults by measurement: token budget, padding, instances x threads (README table).
SWEEP_ARGS ?=
.PHONY: bench-sweep
bench-sweep: $(STAMP)
	$(BIN)/jina-triton sweep --preset full --out $(ARTIFACTS)/sweep $(SWEEP_ARGS)

# Load tests (locust): sweep | soak | fault | overload on a server this run starts (PRESET=tiny|full;
# overload defaults to the full replica), or on a running one (LOADTEST_ARGS="--url HOST:PORT ...").
LOADTEST_MODE ?= sweep
LOADTEST_ARGS ?=
LOADTEST_PRESET ?= $(if $(filter overload,$(LOADTEST_MODE)),full,$(PRESET))
.PHONY: loadtest
loadtest: $(STAMP)
	$(BIN)/python loadtest/run.py $(LOADTEST_MODE) --preset $(LOADTEST_PRESET) --out $(ARTIFACTS)/loadtest $(LOADTEST_ARGS)

# The GPU check (tools/gpu-check.sh): bundle here, run there (one call of the device tool,
# carrying .gpu-bundle), or the CPU dry run CI does.
.PHONY: gpu-bundle gpu-check gpu-check-cpu
gpu-bundle: $(STAMP)
	$(BIN)/python -m jina_triton_tools.gpu_bundle --out .gpu-bundle
gpu-check:
	bash tools/gpu-check.sh .gpu-bundle $(GPU_CHECK_ARGS)
gpu-check-cpu: $(STAMP)
	$(BIN)/jina-triton gpu-check --cpu --out $(ARTIFACTS)/gpu-check-cpu
