#!/usr/bin/env bash
# CI entry point (called by .ci/run): system packages, lint and type checks, then the
# README's test command. Backends listed in CONVFLOW_TEST_REQUIRE must be available.
set -euo pipefail
cd "$(dirname "$0")/.."

bash ci/system-packages.sh

export CONVFLOW_TEST_REQUIRE="${CONVFLOW_TEST_REQUIRE:-numba}"
start=$(date +%s)
make lint
make test
echo "ci: finished in $(( $(date +%s) - start )) s"
