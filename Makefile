# Two commands on a fresh machine:  `make sweep` (the quick depth sweep -> runs/) and
# `make test` (the test suite). Both create .venv and install what they need first.
PY ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: install sweep test test-gpu gpu-check wheels conformance clean

$(STAMP): pyproject.toml constraints.txt
	$(PY) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q -c constraints.txt -e ".[dev]"
	touch $(STAMP)

install: $(STAMP)

sweep: $(STAMP)
	$(BIN)/python scripts/depth_sweep.py --quick

test: $(STAMP)
	$(BIN)/python -m pytest -q

test-gpu: $(STAMP)
	$(BIN)/python -m pytest -q -m gpu

# A CUDA machine without network, with its own torch + triton: GPU tests + benchmarks, one
# results folder (benchmarks/gpu_check.py), run by that machine's GPU_PY (python3).
# `make gpu-check SMOKE=1`: the same on the CPU, in .venv (created first, as for `make test`;
# GPU_PY=... runs it with another Python instead).
ifeq ($(SMOKE)$(origin GPU_PY),1undefined)
GPU_PY := $(BIN)/python
GPU_CHECK_NEEDS := $(STAMP)
endif
GPU_PY ?= python3
gpu-check: $(GPU_CHECK_NEEDS)
	SMOKE=$(SMOKE) $(GPU_PY) benchmarks/gpu_check.py

# Fill .whl/ (git-ignored) with what gpu-check installs offline; run where there is network,
# for the GPU machine's Python (WHEEL_PY) and platform, then copy .whl/ there.
WHEEL_PY ?= 3.12
WHEEL_PLATFORM ?= manylinux_2_28_x86_64
WHEEL_ARGS = --dest .whl --only-binary=:all: --python-version $(WHEEL_PY) --platform $(WHEEL_PLATFORM) -c constraints.txt
wheels:
	$(PY) -m pip download $(WHEEL_ARGS) array-api-compat numpy pytest
	$(PY) -m pip download $(WHEEL_ARGS) --no-deps liger-kernel

conformance: $(STAMP)
	$(BIN)/python scripts/conformance.py

clean:
	rm -rf $(VENV) .pytest_cache .hypothesis
