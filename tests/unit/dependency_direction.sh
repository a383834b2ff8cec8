#!/usr/bin/env bash
# Enforces the dependency direction of docs/architecture (the include side; linking PRIVATE
# enforces the link side): engine knows nothing of the server, gRPC, protobuf, YAML or Prometheus;
# CUDA headers live only in engine/backend/cuda; config depends on nothing of ours; the quantizer
# never uses the server; protobuf types stay in server/.
set -uo pipefail
cd "${1:-$(dirname "$0")/../..}"
fail=0
check() {  # check <description> <dirs> <regex> [exclude-regex]
  local what=$1 dirs=$2 re=$3 ex=${4:-'^$'} hits
  # shellcheck disable=SC2086
  hits=$(grep -rEn --include='*.h' --include='*.cc' --include='*.cu' --include='*.cuh' "$re" $dirs 2>/dev/null | grep -Ev "$ex")
  if [[ -n "$hits" ]]; then
    echo "VIOLATION: $what"
    echo "$hits"
    fail=1
  fi
}
inc='#include *[<"]'
check "engine includes server-side libraries or folders" engine \
  "$inc(grpc|grpcpp|prometheus|yaml-cpp|google/protobuf|server/|config/|proto/|quantizer/|spqr/v1/)"
# bench/gpu/ is the GPU benchmark: it times kernels with CUDA events and streams by design.
check "CUDA headers outside engine/backend/cuda" "engine quantizer server config bench tools" \
  "$inc(cuda_runtime|cuda_fp16|cuda_bf16|cublas_v2|cublasLt|cusolverDn|cuda)\.h" '^(engine/backend/cuda|bench/gpu)/'
check "config depends on project folders" config "$inc(engine|server|proto|quantizer)/"
check "quantizer uses the server or protobuf" quantizer "$inc(server/|proto/|grpc|spqr/v1/|google/protobuf)"
check "protobuf types outside server/" "engine quantizer config" '\.pb\.h'
if ((fail)); then exit 1; fi
echo "dependency direction: OK"
