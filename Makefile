# Every target creates .venv if it is missing and installs what it needs into it.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin

.PHONY: run test lint readme clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)

# The extras this machine can use: opencl always (pyopencl; PoCL or a GPU driver runs it), and
# the cupy backend's CUDA 12 or 13 extra when nvidia-smi reports that CUDA major.
comma := ,
CUDA_MAJOR := $(shell nvidia-smi 2>/dev/null | sed -n 's/.*CUDA Version: *\([0-9][0-9]*\)\..*/\1/p' | head -n 1)
RUN_EXTRAS := opencl$(if $(filter 12 13,$(CUDA_MAJOR)),$(comma)cuda$(CUDA_MAJOR))
NO_OPENCL := make run: pyopencl (the opencl extra) could not be installed here, so convflow is \
  installed without it: the demo runs on numba and says why opencl is unavailable

# The main job: which backends exist here and why the others don't, where a call goes, and
# ResNet-50's first layers run and checked on every available backend. An extra that cannot
# be installed (no wheel for this Python, no compiler) is dropped with a message.
run: $(BIN)/python
	@$(BIN)/python -m pip install -q -e '.[$(RUN_EXTRAS)]' || \
	$(if $(findstring cuda,$(RUN_EXTRAS)),{ echo "make run: the CUDA extra could not be installed; trying without it" >&2; \
	  $(BIN)/python -m pip install -q -e '.[opencl]'; } ||) \
	{ echo "$(NO_OPENCL)" >&2; $(BIN)/python -m pip install -q -e .; }
	$(BIN)/convflow demo

test: $(BIN)/python
	$(BIN)/python -m pip install -q -e '.[test]'
	$(BIN)/python -m pytest

lint: $(BIN)/python
	$(BIN)/python -m pip install -q -e '.[lint]'
	$(BIN)/ruff check convflow tests
	$(BIN)/mypy

# Regenerate the README's table of CONVFLOW_* variables from convflow/config.py.
readme: $(BIN)/python
	$(BIN)/python -m pip install -q -e .
	$(BIN)/python ci/readme_tables.py

clean:
	rm -rf $(VENV) build dist *.egg-info .pytest_cache .mypy_cache .ruff_cache
