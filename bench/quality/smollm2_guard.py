#!/usr/bin/python3
"""Quality guard on SmolLM2-135M-Instruct, outside CI (about 7 minutes on 2 cores).

The CI guard (ctest quality_guard, tests/integration/quality_guard_test.py) runs on the small
committed reference model, which barely reacts to quantization. This one runs the quickstart's
quantization of the real pretrained model (tools/fetch_smollm2.py's converted checkpoint, cached in
models/.cache/) and checks its cost on committed held-out text:

  1. spqr-quantize, the quickstart's configuration: SpQR w4, beta1 = beta2 = 16, 3-bit statistics,
     tau 0.2, 32 calibration windows of 512 tokens of models/reference/calibration.txt, seed 0;
  2. spqr-eval on tests/data/heldout/reference-test-slice.txt (all 36 windows of 512 tokens) for
     the bf16 checkpoint and the SpQR model;
  3. fails (exit 1) unless
       * the bf16 perplexity is within BF16_PPL_TOLERANCE of BF16_PPL_MEASURED (the forward, the
         tokenizer and the converted checkpoint are what they were when the bounds were set);
       * the SpQR model's formula bits are in [4.6, 4.7) (it is the ~4.6-bit configuration);
       * d = ppl_spqr / ppl_bf16 - 1 is above MIN_INCREASE (quantization reached the evaluated
         weights) and at most MAX_INCREASE (the bound this guard exists for).
Exit 2 on a usage error (a missing model, text or binary).

  /usr/bin/python3 bench/quality/smollm2_guard.py --build build
  (the checkpoint: bash tools/quickstart.sh once, or python3 tools/fetch_smollm2.py)
"""

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time

# Measured 2026-12-04 with this script (2 threads, shared 2-core VM): bf16 perplexity 15.8406 on
# the slice's 36 windows; SpQR w4 16/16 tau 0.2 16.5731, i.e. +4.625 %, 4.643 bits by the formula,
# 0.058 % outliers, 352 s to quantize under load 8. docs/quality.md (section "SmolLM2 guard") says
# why this is more than the paper's "within 1 %": the checkpoint is already on a Q4_1 grid.
BF16_PPL_MEASURED = 15.8406
D_MEASURED = 0.04625
# The evaluation is deterministic (fixed windows, the same forward), so the bf16 perplexity moves
# only if the engine's numerics, the tokenizer or the checkpoint change; 0.5 % is far above float
# reassociation (parity with transformers is 5e-6 relative on logits) and far below what a broken
# tokenizer or conversion does.
BF16_PPL_TOLERANCE = 0.005
# Below this the quantized weights cannot have reached the evaluation: re-quantizing the Q4_1 grid
# with 16-wide groups and 3-bit statistics costs several percent (measured +4.6 %).
MIN_INCREASE = 0.001
# The bound: measured +4.625 % plus a margin of 1.4 points (30 % of the measured value). The
# quantizer is deterministic and thread-count independent, so the number moves only when the
# quantizer or the evaluation changes; legitimate changes of that kind (a calibration seed, damping,
# the order of float sums) moved the reference model's increases by up to a third of their value
# (docs/quality.md, calibration noise), and the margin allows that. A real defect costs more: on
# this model RTN 4-bit per row costs +70 % and SpQR w3 16/16 tau 0.2 +14.6 % (docs/quality.md's
# SmolLM2 table), so a quantizer that degrades even part of the way towards those fails here.
MAX_INCREASE = 0.06

SPQR_FLAGS = ["--method", "spqr", "--wbits", "4", "--beta1", "16", "--beta2", "16", "--stats_bits",
              "3", "--tau", "0.2", "--nsamples", "32", "--seqlen", "512", "--seed", "0"]


def run(cmd):
    env = dict(os.environ)
    env.setdefault("OMP_WAIT_POLICY", "passive")
    p = subprocess.run(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    if p.returncode != 0:
        sys.exit(f"error: {' '.join(cmd)} exited {p.returncode}:\n{p.stderr[-4000:]}")
    return p.stdout


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--build", default="build")
    ap.add_argument("--model", default="models/.cache/smollm2-135m-instruct")
    ap.add_argument("--calibration", default="models/reference/calibration.txt")
    ap.add_argument("--text", default="tests/data/heldout/reference-test-slice.txt")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--json", default=None, help="also write the measurements here")
    ap.add_argument("--check-json", default=None, help="apply the bounds to measurements an "
                    "earlier --json wrote instead of measuring (seconds, no quantization)")
    args = ap.parse_args()
    if args.check_json:
        with open(args.check_json) as f:
            m = json.load(f)
        return verdict(args, m["bf16"], m["spqr"], m["report"], m.get("quantize_seconds", 0))
    quantize_bin = os.path.join(args.build, "quantizer", "spqr-quantize")
    eval_bin = os.path.join(args.build, "quantizer", "spqr-eval")
    for path in (args.model + "/model.safetensors", args.calibration, args.text, quantize_bin,
                 eval_bin):
        if not os.path.exists(path):
            print(f"error: {path} does not exist", file=sys.stderr)
            return 2

    def evaluate(model_dir):
        return json.loads(run([eval_bin, "--model", model_dir, "--text", args.text, "--seqlen",
                               "512", "--threads", str(args.threads)]))

    work = tempfile.mkdtemp(prefix="spqr-smollm2-guard-")
    try:
        t0 = time.monotonic()
        out = os.path.join(work, "spqr")
        run([quantize_bin, "--model", args.model, "--out", out, "--calibration", args.calibration,
             "--threads", str(args.threads)] + SPQR_FLAGS)
        quant_s = time.monotonic() - t0
        with open(os.path.join(out, "quantization_report.json")) as f:
            report = json.load(f)
        base, spqr = evaluate(args.model), evaluate(out)
    finally:
        shutil.rmtree(work, ignore_errors=True)

    if args.json:
        with open(args.json, "w") as f:
            json.dump({"bf16": base, "spqr": spqr, "quantize_seconds": quant_s, "report": {
                k: v for k, v in report.items() if k not in ("layers", "blocks")}}, f, indent=1)
    return verdict(args, base, spqr, report, quant_s)


def verdict(args, base, spqr, report, quant_s):
    """Prints the measurement and returns 0 when every bound holds, else 1."""
    d = spqr["ppl"] / base["ppl"] - 1
    bits = report["avg_bits_formula"]
    print(f"smollm2_guard: bf16 ppl {base['ppl']:.4f}, SpQR w4 16/16 tau 0.2 ppl {spqr['ppl']:.4f} "
          f"({d:+.3%}) on {base['windows']} windows x 512 of {args.text}; bits {bits:.3f} formula / "
          f"{report['avg_bits_real']:.3f} real, outliers {report['outlier_share']:.4%}, "
          f"quantize {quant_s:.0f} s")
    failures = []
    if abs(base["ppl"] / BF16_PPL_MEASURED - 1) > BF16_PPL_TOLERANCE:
        failures.append(f"bf16 perplexity {base['ppl']:.4f} is not within "
                        f"{BF16_PPL_TOLERANCE:.1%} of the measured {BF16_PPL_MEASURED}")
    if not 4.6 <= bits < 4.7:
        failures.append(f"SpQR formula bits {bits:.3f} outside [4.6, 4.7)")
    if d <= MIN_INCREASE:
        failures.append(f"increase {d:+.3%} <= {MIN_INCREASE:.1%}: the quantized weights did not "
                        f"reach the evaluation (on this Q4_1-derived checkpoint w4 16/16 with 3-bit "
                        f"statistics cannot be lossless)")
    if d > MAX_INCREASE:
        failures.append(f"increase {d:+.3%} > bound {MAX_INCREASE:.1%} (measured "
                        f"{D_MEASURED:+.2%} when the bound was set)")
    for f in failures:
        print(f"smollm2_guard: FAIL: {f}", file=sys.stderr)
    if not failures:
        print(f"smollm2_guard: PASS (bound: increase <= {MAX_INCREASE:.1%}, bf16 ppl within "
              f"{BF16_PPL_TOLERANCE:.1%} of {BF16_PPL_MEASURED})")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
