#!/usr/bin/env bash
# Peak resident memory (VmHWM) of spqr-server after a 64-token Generate, for a model and KV budget.
# Usage: bench/server_rss.sh [MODEL_DIR] [KV_CACHE_BYTES] [BUILD_DIR]   (prints one JSON line)
set -euo pipefail
cd "$(dirname "$0")/.."
MODEL=${1:-tests/data/test-model}
KV=${2:-268435456}
BUILD=${3:-build}
log=$(mktemp)
"$BUILD/server/spqr-server" --config config/spqr-server.yaml --model "$MODEL" \
  --listen 127.0.0.1:0 --metrics_port 0 --engine.kv_cache_bytes "$KV" >"$log" 2>&1 &
pid=$!
trap 'kill $pid 2>/dev/null || true; rm -f "$log"' EXIT
for _ in $(seq 1 300); do grep -q '^ready' "$log" && break; sleep 0.1; done
addr=$(sed -n 's/^listening on //p' "$log")
"$BUILD/server/spqr-client" --address "$addr" generate "Hello" --max-new-tokens 64 \
  --ignore-eos >/dev/null 2>&1
hwm=$(awk '/VmHWM/ {print $2}' "/proc/$pid/status")
printf '{"model":"%s","kv_cache_bytes":%s,"vm_hwm_kib":%s,"commit":"%s","date":"%s"}\n' \
  "$MODEL" "$KV" "$hwm" "$(git rev-parse --short HEAD)" "$(date -u +%FT%TZ)"
