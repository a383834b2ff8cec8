#!/usr/bin/env bash
# The README's run command: installs what is missing, builds, starts spqr-server on the embedded
# default model in the background, waits until it is healthy, and shows a demo Generate call.
# The server keeps running afterwards (its PID and log are printed); stop it with
#   kill $(cat build/spqr-server.pid)
# By default it serves the SpQR-compressed version of the embedded reference model
# (models/reference, trained by tools/train/), made by spqr-quantize on first run into
# models/reference-spqr-w4 (near-lossless configuration: w4, beta1 = beta2 = 16, 3-bit statistics,
# tau 0.2). Environment: SPQR_MODEL (serve this model dir instead), SPQR_PORT (50051),
# SPQR_METRICS_PORT (9464).
set -euo pipefail
cd "$(dirname "$0")/.."
bash tools/install-deps.sh
bash tools/build.sh
BUILD_DIR=${BUILD_DIR:-build}
if [[ -n "${SPQR_MODEL:-}" ]]; then
  MODEL=$SPQR_MODEL
else
  MODEL=models/reference-spqr-w4
  # The SpQR copy records which weights it was made from, so a checkout with newer reference
  # weights re-quantizes instead of serving a stale copy.
  SOURCE_SHA=$(sha256sum models/reference/model.safetensors | cut -d' ' -f1)
  if [[ ! -f "$MODEL/config.json" || "$(cat "$MODEL/source.sha256" 2>/dev/null)" != "$SOURCE_SHA" ]]; then
    echo "quickstart: quantizing models/reference -> $MODEL (first run, or the weights changed)"
    # A copy made by an older quickstart has no spqr-quantize output marker, so --force would
    # (rightly) refuse it; it is ours (source.sha256 says so): remove it first.
    if [[ -f "$MODEL/source.sha256" && ! -f "$MODEL/.spqr-quantize-output" ]]; then
      rm -rf "$MODEL"
    fi
    "$BUILD_DIR/quantizer/spqr-quantize" --model models/reference --out "$MODEL" --force \
      --calibration models/reference/calibration.txt --method spqr --wbits 4 --beta1 16 \
      --beta2 16 --stats_bits 3 --tau 0.2 --nsamples 32 --seqlen 512 --seed 0
    echo "$SOURCE_SHA" > "$MODEL/source.sha256"
  fi
fi
PORT=${SPQR_PORT:-50051}
METRICS_PORT=${SPQR_METRICS_PORT:-9464}
ADDR="127.0.0.1:${PORT}"

if [[ -f "$BUILD_DIR/spqr-server.pid" ]] && kill -0 "$(cat "$BUILD_DIR/spqr-server.pid")" 2>/dev/null; then
  echo "quickstart: stopping the server started earlier (pid $(cat "$BUILD_DIR/spqr-server.pid"))"
  kill "$(cat "$BUILD_DIR/spqr-server.pid")" || true
  sleep 1
fi
nohup "$BUILD_DIR/server/spqr-server" --config config/spqr-server.yaml --model "$MODEL" \
  --listen "$ADDR" --metrics_port "${METRICS_PORT}" >"$BUILD_DIR/spqr-server.log" 2>&1 &
echo $! >"$BUILD_DIR/spqr-server.pid"
echo "quickstart: spqr-server pid $(cat "$BUILD_DIR/spqr-server.pid"), log $BUILD_DIR/spqr-server.log"

for _ in $(seq 1 120); do
  if "$BUILD_DIR/server/spqr-client" --address "$ADDR" health >/dev/null 2>&1; then break; fi
  if ! kill -0 "$(cat "$BUILD_DIR/spqr-server.pid")" 2>/dev/null; then
    echo "quickstart: spqr-server exited; log follows" >&2
    cat "$BUILD_DIR/spqr-server.log" >&2
    exit 1
  fi
  sleep 0.5
done
"$BUILD_DIR/server/spqr-client" --address "$ADDR" health
"$BUILD_DIR/server/spqr-client" --address "$ADDR" info
echo "== demo: streaming Generate"
"$BUILD_DIR/server/spqr-client" --address "$ADDR" generate "The kernel's memory allocator" \
  --max-new-tokens 48 --temperature 0.7 --seed 1
echo
echo "quickstart: server answering on $ADDR (gRPC) and http://127.0.0.1:${METRICS_PORT}/metrics"
echo "quickstart: stop it with: kill \$(cat $BUILD_DIR/spqr-server.pid)"
