#!/usr/bin/env bash
# GPU check of the cupy backend, for a machine with an NVIDIA GPU and no internet access:
#   1. installs convflow with its test and CUDA extras, and torch, from a directory of wheels;
#   2. runs the whole suite with CONVFLOW_TEST_REQUIRE=numba,cupy (the parametrized backend
#      tests, the ONNX conformance cases and the gpu-marked tests must run, not skip);
#   3. benchmarks the cupy backend (cuDNN and its own kernels) against
#      torch.nn.functional.conv2d on ResNet-50's convolutions at batch 32, float32 and float16.
#
# Providing the wheels (on a machine with internet access, same OS, Python and CUDA major):
#   pip download -d wheelhouse hatchling '.[test,cuda12]' torch      # or cuda13
# then copy wheelhouse/ to the GPU machine and run, from the checkout:
#   CONVFLOW_WHEELS=/path/to/wheelhouse CONVFLOW_CUDA=cuda12 bash ci/gpu-check.sh
#
# Environment: CONVFLOW_WHEELS (required), CONVFLOW_CUDA (cuda12 | cuda13, default cuda12),
# CONVFLOW_GPU_VENV (default .venv-gpu), CONVFLOW_BENCH_JSON (default bench-cupy.json),
# CONVFLOW_BENCH_WORKSPACE_MB (default 1024) for the benchmark's CONVFLOW_WORKSPACE_MB,
# CONVFLOW_BENCH_ENFORCE=1 to fail when a layer misses the speed targets.
set -euo pipefail
cd "$(dirname "$0")/.."

: "${CONVFLOW_WHEELS:?set CONVFLOW_WHEELS to a directory of wheels; see the comment at the top of ci/gpu-check.sh}"
cuda_extra="${CONVFLOW_CUDA:-cuda12}"
case "$cuda_extra" in
  cuda12|cuda13) ;;
  *) echo "gpu-check: CONVFLOW_CUDA must be cuda12 or cuda13, got '$cuda_extra'" >&2; exit 2 ;;
esac
venv="${CONVFLOW_GPU_VENV:-.venv-gpu}"
start=$(date +%s)

python3 -m venv "$venv"
"$venv/bin/python" -m pip install -q --no-index --find-links "$CONVFLOW_WHEELS" \
  ".[test,$cuda_extra]" torch

nvidia-smi || echo "gpu-check: nvidia-smi is not available"
"$venv/bin/python" -m convflow info

export CONVFLOW_TEST_REQUIRE=numba,cupy
export CONVFLOW_ALLOW_TF32=0
"$venv/bin/python" -m pytest -ra

# cuDNN's fastest engines for some layers need more than the default 64 MiB workspace; the
# benchmark allows 1 GiB (printed with the results), as PyTorch allows what memory permits.
export CONVFLOW_WORKSPACE_MB="${CONVFLOW_BENCH_WORKSPACE_MB:-1024}"
bench_args=(--batch 32 --dtypes float32,float16 --json "${CONVFLOW_BENCH_JSON:-bench-cupy.json}")
if [ "${CONVFLOW_BENCH_ENFORCE:-0}" = "1" ]; then
  bench_args+=(--enforce)
fi
"$venv/bin/python" ci/bench_cupy.py "${bench_args[@]}"
echo "gpu-check: finished in $(( $(date +%s) - start )) s"
