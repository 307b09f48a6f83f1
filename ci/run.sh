#!/usr/bin/env bash
# CI entry point (called by .ci/run): system packages, lint and type checks, then the
# README's test command. Backends listed in CONVFLOW_TEST_REQUIRE must be available.
set -euo pipefail
cd "$(dirname "$0")/.."

# PoCL: a CPU OpenCL implementation, so the opencl backend's whole suite runs here.
bash ci/system-packages.sh pocl-opencl-icd ocl-icd-libopencl1

export CONVFLOW_TEST_REQUIRE="${CONVFLOW_TEST_REQUIRE:-numba,opencl}"
start=$(date +%s)
make lint
make test
echo "ci: finished in $(( $(date +%s) - start )) s"
