#!/usr/bin/env bash
# Quantizes one model with the baseline and SpQR configurations of spqr-method.md section 7 and
# measures each: quantization wall time and peak RSS, average bits (paper formula and real bytes)
# and perplexity (spqr-eval, section 8 protocol). Raw results: one JSON line per configuration in
# $OUT/results.jsonl; a Markdown table in $OUT/table.md.
#
#   quantizer/bench/run_quant_bench.sh BUILD_DIR MODEL_DIR CALIB_TEXT EVAL_TEXT OUT_DIR \
#       [NSAMPLES SEQLEN EVAL_SEQLEN MAX_WINDOWS THREADS]
set -euo pipefail
build=$1 model=$2 calib=$3 evaltext=$4 out=$5
nsamples=${6:-128} seqlen=${7:-512} eval_seqlen=${8:-512} max_windows=${9:-0} threads=${10:-0}
quant=$build/quantizer/spqr-quantize
evalbin=$build/quantizer/spqr-eval
mkdir -p "$out"
: > "$out/results.jsonl"

# name | spqr-quantize flags
configs=(
  "rtn-w4-g128|--method rtn --wbits 4 --beta1 128 --stats_bits 16 --act_order=false --tau inf"
  "rtn-w3-g128|--method rtn --wbits 3 --beta1 128 --stats_bits 16 --act_order=false --tau inf"
  "gptq-w4-g128|--method gptq --wbits 4 --beta1 128 --stats_bits 16 --lambda 0.01 --tau inf"
  "gptq-w3-g128|--method gptq --wbits 3 --beta1 128 --stats_bits 16 --lambda 0.01 --tau inf"
  "spqr-w4-16x16-tau0.2|--method spqr --wbits 4 --beta1 16 --beta2 16 --stats_bits 3 --tau 0.2"
  "spqr-w3-16x16-tau0.2|--method spqr --wbits 3 --beta1 16 --beta2 16 --stats_bits 3 --tau 0.2"
  "spqr-w3-8x64-tau0.45|--method spqr --wbits 3 --beta1 8 --beta2 64 --stats_bits 3 --tau 0.45"
  "spqr-w3-16x16-noout|--method spqr --wbits 3 --beta1 16 --beta2 16 --stats_bits 3 --tau inf"
)

fp=$("$evalbin" --model "$model" --text "$evaltext" --seqlen "$eval_seqlen" \
      --max_windows "$max_windows" --threads "$threads")
echo "{\"config\": \"fp16\", \"eval\": $fp}" >> "$out/results.jsonl"
for entry in "${configs[@]}"; do
  name=${entry%%|*} flags=${entry#*|}
  dir=$out/models/$name
  # shellcheck disable=SC2086
  "$quant" --model "$model" --out "$dir" --force --calibration "$calib" --nsamples "$nsamples" \
      --seqlen "$seqlen" --threads "$threads" $flags 2> "$out/$name.progress.jsonl" > /dev/null
  ev=$("$evalbin" --model "$dir" --text "$evaltext" --seqlen "$eval_seqlen" \
        --max_windows "$max_windows" --threads "$threads")
  report=$(/usr/bin/python3 -c 'import json,sys; r=json.load(open(sys.argv[1])); r.pop("layers"); print(json.dumps(r))' \
           "$dir/quantization_report.json")
  echo "{\"config\": \"$name\", \"flags\": \"$flags\", \"quantization\": $report, \"eval\": $ev}" \
      >> "$out/results.jsonl"
  rm -rf "$dir"
done

/usr/bin/python3 - "$out" <<'PY'
import json, sys
out = sys.argv[1]
rows = [json.loads(l) for l in open(f"{out}/results.jsonl")]
lines = ["| config | bits (formula) | bits (real) | outliers % | ppl | quant. time s | peak RSS MiB |",
         "|---|---|---|---|---|---|---|"]
for r in rows:
    e, q = r["eval"], r.get("quantization")
    if q is None:
        lines.append(f"| {r['config']} | 16 | 16 | - | {e['ppl']:.3f} | - | - |")
    else:
        lines.append(f"| {r['config']} | {q['avg_bits_formula']:.3f} | {q['avg_bits_real']:.3f} | "
                     f"{100*q['outlier_share']:.3f} | {e['ppl']:.3f} | {q['wall_seconds']:.1f} | "
                     f"{q['peak_rss_bytes']/2**20:.0f} |")
e = rows[0]["eval"]
lines.append("")
lines.append(f"Perplexity: seq_len {e['seq_len']}, {e['windows']} windows, {e['tokens_scored']} scored tokens "
             f"of {e['text']}.")
open(f"{out}/table.md", "w").write("\n".join(lines) + "\n")
print("\n".join(lines))
PY
