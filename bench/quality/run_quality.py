#!/usr/bin/python3
"""Measures the compression-quality table of docs/quality.md: one model quantized with the RTN,
GPTQ and SpQR configurations of CONFIGS, each evaluated with spqr-eval (the perplexity protocol of
spqr-method.md section 8: the whole text tokenized at once, non-overlapping windows of --eval-seqlen
tokens, no BOS).

Raw results: one JSON line per configuration in --out (fp16 first), with the spqr-quantize flags, its
report (bits by the paper's formula and by real bytes, outliers, wall time, peak RSS; per-layer rows
dropped) and spqr-eval's output. Rows already present in --out are kept and skipped, so an
interrupted run resumes. docs/quality.md and its plot are made from that file by
bench/quality/make_quality_table.py.

Usage:
  /usr/bin/python3 bench/quality/run_quality.py --build build --model models/reference \\
      --calibration .corpus/validation.txt --text .corpus/test.txt \\
      --out bench/results/quality/reference_YYYY-MM-DD.jsonl [--only NAME,NAME] [--max-windows N]
"""

import argparse
import datetime
import hashlib
import json
import os
import shutil
import subprocess
import sys
import tempfile

# (name, family, label, spqr-quantize flags[, max bits, tau candidates]). GPTQ uses the GPTQ
# paper's damping (1 % of the mean Hessian diagonal); SpQR the SpQR reference code's (lambda 1.0, the
# quantizer's default). "Per row" is beta1 0: one scale and zero per output row, as in the papers'
# per-channel baselines. Grouped baselines use groups of 128 with fp16 statistics, as in the GPTQ
# paper.
CONFIGS = [
    ("rtn-w4-row", "RTN", "RTN 4-bit per-row",
     "--method rtn --wbits 4 --beta1 0 --stats_bits 16 --act_order=false --tau inf"),
    ("rtn-w3-g128", "RTN", "RTN 3-bit g128",
     "--method rtn --wbits 3 --beta1 128 --stats_bits 16 --act_order=false --tau inf"),
    ("gptq-w4-row", "GPTQ", "GPTQ 4-bit per-row (act-order)",
     "--method gptq --wbits 4 --beta1 0 --stats_bits 16 --lambda 0.01 --act_order=true --tau inf"),
    ("gptq-w4-g128", "GPTQ", "GPTQ 4-bit g128 (act-order)",
     "--method gptq --wbits 4 --beta1 128 --stats_bits 16 --lambda 0.01 --act_order=true --tau inf"),
    ("gptq-w3-row", "GPTQ", "GPTQ 3-bit per-row (act-order)",
     "--method gptq --wbits 3 --beta1 0 --stats_bits 16 --lambda 0.01 --act_order=true --tau inf"),
    ("gptq-w3-g128", "GPTQ", "GPTQ 3-bit g128 (act-order)",
     "--method gptq --wbits 3 --beta1 128 --stats_bits 16 --lambda 0.01 --act_order=true --tau inf"),
    # SmolLM2's layers are 576 and 1536 wide: 128 divides neither 576, so its grouped baselines use
    # groups of 64 (the nearest power of two that divides both; 0.5 bits of fp16 statistics).
    ("rtn-w3-g64", "RTN", "RTN 3-bit g64",
     "--method rtn --wbits 3 --beta1 64 --stats_bits 16 --act_order=false --tau inf"),
    ("gptq-w4-g64", "GPTQ", "GPTQ 4-bit g64 (act-order)",
     "--method gptq --wbits 4 --beta1 64 --stats_bits 16 --lambda 0.01 --act_order=true --tau inf"),
    ("gptq-w3-g64", "GPTQ", "GPTQ 3-bit g64 (act-order)",
     "--method gptq --wbits 3 --beta1 64 --stats_bits 16 --lambda 0.01 --act_order=true --tau inf"),
    ("spqr-w3-16x16-noout", "SpQR", "SpQR w3 16/16, 3-bit stats, no outliers",
     "--method spqr --wbits 3 --beta1 16 --beta2 16 --stats_bits 3 --tau inf"),
    ("spqr-w3-8x64-under4", "SpQR", "SpQR w3 8/64, tau for < 4.0 bits",
     "--method spqr --wbits 3 --beta1 8 --beta2 64 --stats_bits 3 --tau {tau}", 4.0,
     [0.15, 0.2, 0.25, 0.3, 0.35, 0.45, 0.6, 0.8, 1.0]),
    ("spqr-w4-16x16-tau0.2", "SpQR", "SpQR w4 16/16 tau 0.2",
     "--method spqr --wbits 4 --beta1 16 --beta2 16 --stats_bits 3 --tau 0.2"),
    ("spqr-w3-16x16-tau0.2", "SpQR", "SpQR w3 16/16 tau 0.2",
     "--method spqr --wbits 3 --beta1 16 --beta2 16 --stats_bits 3 --tau 0.2"),
    ("spqr-w2-16x16-under3", "SpQR", "SpQR w2 16/16, tau for < 3.0 bits",
     "--method spqr --wbits 2 --beta1 16 --beta2 16 --stats_bits 3 --tau {tau}", 3.0,
     [0.6, 0.8, 1.0, 1.25, 1.5, 2.0, 3.0]),
    # Diagnostics for a model whose weights are already on a 4-bit grid (SmolLM2's GGUF is Q4_1:
    # w = d*q + m per block of 32 consecutive inputs, min and max at levels 0 and 15; docs/models.md).
    # SpQR's min-max fit (fractional zero) with groups of 32 and fp16 statistics can land on that
    # grid only when its groups are the Q4_1 blocks: act_order=false keeps the input order, so group
    # g covers inputs 32g..32g+31 = one block. The act-order twin has the same bits but permuted
    # (misaligned) groups. Not part of the paper's protocol; family "diag" in the table.
    ("diag-w4-g32-fp16-aligned", "diag", "diag: w4 g32, fp16 stats, no outliers, Q4_1-aligned",
     "--method spqr --wbits 4 --beta1 32 --beta2 16 --stats_bits 16 --act_order=false --tau inf"),
    ("diag-w4-g32-fp16-actorder", "diag",
     "diag: w4 g32, fp16 stats, no outliers, act-order (misaligned)",
     "--method spqr --wbits 4 --beta1 32 --beta2 16 --stats_bits 16 --act_order=true --tau inf"),
]
# A "{tau}" row keeps the smallest of its thresholds (the most outliers) whose average bits (paper
# formula) stay under the row's max bits, found by bisection (since 2026-12-04; before, by trying
# them in increasing order); every try is recorded. Fewer
# outliers as tau grows, so the first fit is the one with the most outliers. (At 2 bits tau 0.2
# flags ~11 % of the weights, 6 bits/param in all; the w2 row starts at 0.6, measured 3.26 bits on a
# step-277 export, to save quantizer runs.)


def sha256_file(path):
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def git_commit():
    try:
        return subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True,
                              text=True, check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return None


def evaluate(args, model_dir):
    """spqr-eval's JSON result for model_dir."""
    cmd = [os.path.join(args.build, "quantizer", "spqr-eval"), "--model", model_dir, "--text",
           args.text, "--seqlen", str(args.eval_seqlen), "--max_windows", str(args.max_windows),
           "--threads", str(args.threads)]
    p = subprocess.run(cmd, capture_output=True, text=True)
    if p.returncode != 0:
        sys.exit(f"error: {' '.join(cmd)} exited with {p.returncode}: {p.stderr.strip()}")
    return json.loads(p.stdout)


def quantize(args, flags, out_dir, log_path):
    """Runs spqr-quantize; returns its report without the per-layer and per-block rows."""
    cmd = [os.path.join(args.build, "quantizer", "spqr-quantize"), "--model", args.model, "--out",
           out_dir, "--force", "--calibration", args.calibration, "--nsamples",
           str(args.rtn_nsamples if args.rtn_nsamples and "--method rtn" in flags else args.nsamples),
           "--seqlen", str(args.seqlen), "--seed", str(args.seed), "--threads",
           str(args.threads)] + flags.split()
    with open(log_path, "w") as log:
        p = subprocess.run(cmd, stdout=subprocess.DEVNULL, stderr=log)
    if p.returncode != 0:
        sys.exit(f"error: {' '.join(cmd)} exited with {p.returncode} (see {log_path})")
    with open(os.path.join(out_dir, "quantization_report.json")) as f:
        report = json.load(f)
    report.pop("layers", None)
    report.pop("blocks", None)
    return report


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--build", default="build")
    p.add_argument("--model", default="models/reference")
    p.add_argument("--calibration", default=".corpus/validation.txt")
    p.add_argument("--text", default=".corpus/test.txt")
    p.add_argument("--out", required=True, help="results JSON lines (appended, resumable)")
    p.add_argument("--only", default="", help="comma-separated config names (default: all)")
    p.add_argument("--nsamples", type=int, default=128)
    # RTN's weights do not depend on the calibration data (spqr-quantize still runs it through the
    # model, only for the per-layer error report), so fewer windows give the same model, faster.
    p.add_argument("--rtn-nsamples", type=int, default=0, help="calibration windows for RTN rows "
                   "(0 = --nsamples; recorded as rtn_nsamples)")
    p.add_argument("--seqlen", type=int, default=512, help="calibration window length")
    p.add_argument("--eval-seqlen", type=int, default=512)
    p.add_argument("--max-windows", type=int, default=0, help="0 = the whole text")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=0)
    p.add_argument("--logs", default=None, help="quantizer progress logs (default: a temp dir)")
    args = p.parse_args()
    for path in (args.model, args.calibration, args.text):
        if not os.path.exists(path):
            sys.exit(f"error: {path} does not exist")

    done = set()
    if os.path.exists(args.out):
        with open(args.out) as f:
            done = {json.loads(l)["config"] for l in f if l.strip()}
    os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
    only = set(filter(None, args.only.split(",")))
    unknown = only - {c[0] for c in CONFIGS} - {"fp16"}
    if unknown:
        sys.exit(f"error: unknown config(s) {sorted(unknown)}")
    logs = args.logs or tempfile.mkdtemp(prefix="spqr-quality-logs-")
    os.makedirs(logs, exist_ok=True)
    common = {"model": args.model, "model_sha256": sha256_file(
        os.path.join(args.model, "model.safetensors")), "calibration": args.calibration,
        "calibration_sha256": sha256_file(args.calibration), "nsamples": args.nsamples,
        "calib_seqlen": args.seqlen, "rtn_nsamples": args.rtn_nsamples or args.nsamples, "seed": args.seed, "commit": git_commit(),
        "date": datetime.date.today().isoformat()}

    def emit(rec):
        rec.update(common)
        with open(args.out, "a") as f:
            f.write(json.dumps(rec) + "\n")
        e = rec["eval"]
        q = rec.get("quantization") or {}
        print(f"{rec['config']:24s} ppl {e['ppl']:10.4f}  bits {q.get('avg_bits_formula', 16):.3f}"
              f"  eval {e['seconds']:.0f} s", flush=True)

    if "fp16" not in done and (not only or "fp16" in only):
        emit({"config": "fp16", "family": "fp16", "label": "bf16 (unquantized)", "flags": "",
              "eval": evaluate(args, args.model)})
    work = tempfile.mkdtemp(prefix="spqr-quality-")
    try:
        for name, family, label, flags, *search in CONFIGS:
            if name in done or (only and name not in only):
                continue
            out_dir = os.path.join(work, name)
            tries = []
            if "{tau}" in flags:
                max_bits, candidates = search
                # Bisection over the increasing candidates for the first that fits (bits fall as
                # tau grows): the same answer as trying them in order, in about log2(n) runs.
                lo, hi, best = 0, len(candidates), None
                while lo < hi:
                    mid = (lo + hi) // 2
                    f = flags.format(tau=candidates[mid])
                    try_dir = f"{out_dir}.tau{candidates[mid]}"
                    r = quantize(args, f, try_dir, os.path.join(logs, f"{name}.log"))
                    tries.append({"tau": candidates[mid], "avg_bits_formula": r["avg_bits_formula"],
                                  "outlier_share": r["outlier_share"]})
                    if r["avg_bits_formula"] < max_bits:
                        if best is not None:
                            shutil.rmtree(best[2], ignore_errors=True)
                        best, hi = (f, r, try_dir), mid
                    else:
                        shutil.rmtree(try_dir, ignore_errors=True)
                        lo = mid + 1
                if best is None:
                    sys.exit(f"error: no tau in {candidates} keeps {name} under {max_bits} bits")
                flags, report = best[0], best[1]
                os.rename(best[2], out_dir)
            else:
                report = quantize(args, flags, out_dir, os.path.join(logs, f"{name}.log"))
            rec = {"config": name, "family": family, "label": label, "flags": flags,
                   "quantization": report, "eval": evaluate(args, out_dir)}
            if tries:
                rec["tau_search"] = tries
            emit(rec)
            shutil.rmtree(out_dir, ignore_errors=True)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
