# Every target creates .venv if it is missing and installs what it needs into it.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin

.PHONY: run test lint readme clean gpu-wheels

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

# The wheels ci/gpu-check.sh installs on the lent GPU machine, which has no network. Its
# python3 (3.12) already has GPU_PREINSTALLED; GPU_WHEELS is exactly what the check needs on
# top of it: convflow's runtime dependencies platformdirs, rich and scipy-openblas32 (the numba
# backend's private BLAS), the cuDNN frontend, pyopencl (the
# opencl backend on NVIDIA's OpenCL), onnx (the conformance cases and the benchmark's
# ResNet-50 layers), hypothesis and dask/distributed (the property tests and the gpu-marked
# dask test), each with the requirements the machine lacks, pinned to the versions tested here.
# nvidia-cudnn-frontend 1.28.0 is the newest release that requires nothing: from 1.29 on it
# pulls nvidia-cutlass-dsl[cu13] and apache-tvm-ffi, far past the 64 MiB the machine takes;
# the frontend loads whichever libcudnn.so.9 it finds, here the nvidia-cudnn-cu13 wheel's.
# Wheels up to manylinux_2_28 only: torch's CUDA 13 wheels need glibc 2.28, so the machine
# has at least that, and nothing newer is assumed.
GPU_PREINSTALLED := numpy numba llvmlite scipy ml-dtypes pytest pytest-xdist execnet \
  iniconfig packaging pluggy pygments torch filelock typing-extensions sympy mpmath \
  networkx jinja2 markupsafe fsspec setuptools cupy-cuda13x fastrlock cuda-pathfinder \
  nvidia-cudnn-cu13
GPU_WHEELS := platformdirs==4.14.9 rich==15.0.0 markdown-it-py==4.3.0 mdurl==0.1.2 \
  scipy-openblas32==0.3.34.481.3 \
  nvidia-cudnn-frontend==1.28.0 \
  pyopencl==2026.1.4 pytools==2026.1.1 siphash24==1.9 \
  onnx==1.23.2 protobuf==7.36.2 hypothesis==6.170.17 sortedcontainers==2.4.0 \
  dask==2026.8.0 distributed==2026.8.0 click==8.5.1 cloudpickle==3.1.3 partd==1.4.2 \
  locket==1.0.0 pyyaml==6.0.4 toolz==1.2.0 msgpack==1.2.4 psutil==7.2.2 tblib==3.2.2 \
  tornado==6.6.1 zict==3.0.0
GPU_PLATFORMS := manylinux2014_x86_64 manylinux_2_17_x86_64 manylinux_2_24_x86_64 \
  manylinux_2_27_x86_64 manylinux_2_28_x86_64

# Fills .whl/ (git-ignored) for ci/gpu-check.sh, then lists it with sizes and checks that it
# and the working tree stay under the 64 MiB the GPU machine takes along.
gpu-wheels: $(BIN)/python
	rm -rf .whl
	$(BIN)/python -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 \
	  --implementation cp $(addprefix --platform ,$(GPU_PLATFORMS)) -d .whl $(GPU_WHEELS)
	bash ci/gpu-check.sh --wheels

clean:
	rm -rf $(VENV) build dist *.egg-info .pytest_cache .mypy_cache .ruff_cache
