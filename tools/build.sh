#!/usr/bin/env bash
# Configures and builds the project into build/ (Release; the CUDA backend is compiled when nvcc
# is found, for SPQR_CUDA_ARCHITECTURES, default 90 = H100/H200).
# Environment: BUILD_DIR (build), BUILD_TYPE (Release), JOBS (2 in CI, else all cores),
#              SPQR_CUDA (AUTO), SPQR_CUDA_ARCHITECTURES (90), CMAKE_ARGS (extra).
set -euo pipefail
cd "$(dirname "$0")/.."
BUILD_DIR=${BUILD_DIR:-build}
JOBS=${JOBS:-$([[ "${CI:-}" == "true" ]] && echo 2 || nproc)}
cmake -S . -B "$BUILD_DIR" -G Ninja \
  -DCMAKE_BUILD_TYPE="${BUILD_TYPE:-Release}" \
  -DSPQR_CUDA="${SPQR_CUDA:-AUTO}" \
  -DSPQR_CUDA_ARCHITECTURES="${SPQR_CUDA_ARCHITECTURES:-90}" \
  ${CMAKE_ARGS:-}
cmake --build "$BUILD_DIR" -j "$JOBS"
