#!/usr/bin/env bash
# Builds the libFuzzer targets (tests/fuzz) with clang in their own build directory and runs each
# from its seed corpus (ctest -L fuzz). Only the fuzz targets are compiled, not the project.
# Environment: BUILD_DIR (build-fuzz), FUZZ_SECONDS (0 = the short fixed-seed smoke runs; N > 0 =
#              N seconds of fuzzing per target), JOBS (2 in CI, else all cores; also how many
#              targets fuzz at once), CMAKE_ARGS (extra).
# Needs clang and libclang-rt-14-dev: bash tools/install-deps.sh --fuzz.
set -euo pipefail
cd "$(dirname "$0")/.."
BUILD_DIR=${BUILD_DIR:-build-fuzz}
JOBS=${JOBS:-$([[ "${CI:-}" == "true" ]] && echo 2 || nproc)}
cmake -S . -B "$BUILD_DIR" -G Ninja \
  -DCMAKE_BUILD_TYPE=Release \
  -DCMAKE_C_COMPILER=clang -DCMAKE_CXX_COMPILER=clang++ \
  -DSPQR_FUZZ=ON -DSPQR_FUZZ_SECONDS="${FUZZ_SECONDS:-0}" -DSPQR_CUDA=OFF \
  ${CMAKE_ARGS:-} >/dev/null
cmake --build "$BUILD_DIR" -j "$JOBS" --target fuzz_targets
# Inputs a run finds go to $BUILD_DIR/fuzz/<name>_corpus, crash inputs to $BUILD_DIR/fuzz/.
ctest --test-dir "$BUILD_DIR" -L fuzz --output-on-failure -j "$JOBS"
