#!/usr/bin/env bash
# Fails when a tracked C++/CUDA/proto file is not formatted with the repository's .clang-format.
# Skips (with a note) when clang-format is not installed.
set -euo pipefail
cd "$(dirname "$0")/.."
if ! command -v clang-format >/dev/null; then
  echo "check-format: clang-format not installed, skipped"
  exit 0
fi
# proto/grpc/ holds verbatim copies of gRPC's own health and reflection protos: not ours to format.
mapfile -t files < <(git ls-files '*.h' '*.cc' '*.cu' '*.cuh' '*.proto' ':!:proto/grpc/**')
bad=()
for f in "${files[@]}"; do
  if ! clang-format --dry-run --Werror "$f" >/dev/null 2>&1; then bad+=("$f"); fi
done
if ((${#bad[@]})); then
  echo "check-format: not formatted (run clang-format -i): ${bad[*]}"
  exit 1
fi
echo "check-format: ${#files[@]} files formatted"
