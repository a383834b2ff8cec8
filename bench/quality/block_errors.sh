#!/usr/bin/env bash
# Diagnostic for docs/quality.md: the quantizer's own layer-level error for some configurations of
# the quality table (same flags as bench/quality/run_quality.py's CONFIGS, same calibration), without
# the perplexity evaluation. One JSON line per configuration: its name, flags and the report's
# per-block relative output error (|Y_q - Y| / |Y| of each transformer block on the calibration
# windows, with already-quantized inputs) and per-layer relative Hessian-weighted error summary.
#
#   bash bench/quality/block_errors.sh BUILD MODEL CALIB OUT.jsonl NAME "FLAGS" [NAME "FLAGS" ...]
set -euo pipefail
build=$1 model=$2 calib=$3 out=$4
shift 4
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
while [[ $# -ge 2 ]]; do
  name=$1 flags=$2
  shift 2
  # shellcheck disable=SC2086
  "$build/quantizer/spqr-quantize" --model "$model" --out "$tmp/$name" --force \
    --calibration "$calib" --nsamples 128 --seqlen 512 --seed 0 --threads 2 $flags \
    > /dev/null 2> "$tmp/$name.log"
  /usr/bin/python3 - "$tmp/$name/quantization_report.json" "$name" "$flags" >> "$out" <<'PY'
import json, sys
r = json.load(open(sys.argv[1]))
errs = [l["relative_hessian_error"] for l in r["layers"]]
print(json.dumps({"config": sys.argv[2], "flags": sys.argv[3],
                  "avg_bits_formula": r["avg_bits_formula"],
                  "block_relative_output_error": [b["relative_output_error"] for b in r["blocks"]],
                  "layer_relative_hessian_error_mean": sum(errs) / len(errs)}))
PY
  rm -rf "${tmp:?}/$name"
done
