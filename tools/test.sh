#!/usr/bin/env bash
# The README's test command: installs what is missing, builds, and runs every test with ctest.
# GPU tests (label gpu) skip with a reason when no device is present.
set -euo pipefail
cd "$(dirname "$0")/.."
bash tools/install-deps.sh
bash tools/build.sh
BUILD_DIR=${BUILD_DIR:-build}
# OpenMP threads that spin while waiting starve everything else on a small shared CI machine.
export OMP_WAIT_POLICY=${OMP_WAIT_POLICY:-passive}
JOBS=${JOBS:-$([[ "${CI:-}" == "true" ]] && echo 2 || nproc)}
ctest --test-dir "$BUILD_DIR" --output-on-failure -j "$JOBS" --timeout 600
