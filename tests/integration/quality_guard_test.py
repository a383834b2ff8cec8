#!/usr/bin/python3
"""Quantization-quality regression guard (issue 7, section 4).

Quantizes the reference model (models/reference, whatever weights are committed there) twice with
the real spqr-quantize:
  * SpQR, the paper's near-lossless configuration: w4, beta1 = beta2 = 16, 3-bit statistics,
    tau 0.2 (about 4.6 bits per parameter);
  * RTN 3-bit per row (one fp16 scale and zero per output row, no outliers, no Hessian): a
    configuration that must clearly hurt, so that a quantizer or evaluator that silently does
    nothing (writes the dense weights back, evaluates the wrong model) fails this test;
and measures, with the real spqr-eval, the perplexity of the dense model (the "fp16" baseline;
the checkpoint is bf16) and of both quantized models on every 512-token window of a held-out slice
of the corpus's test split (tests/data/heldout/, never used for training or calibration).

Asserted: the dense perplexity is finite and below the vocabulary size (better than a uniform
guess); SpQR's is within SPQR_MAX_REL_INCREASE of it; RTN 3-bit's is at least RTN3_MIN_REL_INCREASE
above it. The bounds are relative to the dense model's perplexity, so they hold for any reasonably
trained model in models/reference rather than for one set of numbers; a model too weakly trained to
notice quantization at all fails the RTN floor, on purpose (see RTN3_MIN_REL_INCREASE).

Run through ctest (`ctest -R quality_guard`, labels integration;quality), or by hand:
  /usr/bin/python3 tests/integration/quality_guard_test.py \\
      --quantize build/quantizer/spqr-quantize --eval build/quantizer/spqr-eval \\
      --model models/reference --calibration models/reference/calibration.txt \\
      --text tests/data/heldout/reference-test-slice.txt
The quantized models live in a temp dir that is removed at the end.
"""
import argparse
import json
import math
import os
import shutil
import subprocess
import sys
import tempfile
import time
import unittest

ARGS = None

# SpQR's perplexity may exceed the dense model's by at most this fraction. The paper's claim for
# w4 beta1 = beta2 = 16, 3-bit statistics, tau 0.2 (~4.6 bits) is "near-lossless": +0.8 % to +1.1 %
# over fp16 on LLaMA 7B-65B (WikiText-2; ../shared/docs/spqr-method.md section 7). We allow twice
# that because (a) our model is ~1000x smaller than the paper's smallest (6.8 M parameters, rows
# of 256 or 768 weights), and small models tend to be more fragile under quantization (in the
# same table RTN 4-bit costs LLaMA-7B +13 % but LLaMA-65B +10 %); (b) the slice is only ~40
# windows (~21 k scored tokens), so the relative increase measured on it varies by a few tenths
# of a percent from slice to slice even though both models score exactly the same tokens. 2 % is
# still far below what a real defect costs on a trained LLM: RTN 3-bit and SpQR at 2 bits without
# outliers lose tens of percent, and a broken statistic, permutation or outlier path shows up as
# a multiple, not a fraction, of the dense perplexity.
SPQR_MAX_REL_INCREASE = 0.02

# RTN 3-bit per row must be at least this much worse than dense. Published numbers put RTN at
# +10-13 % already at 4 bits (spqr-method.md section 7) and far worse at 3 bits per row; 5 % is a
# conservative floor whose job is to prove that quantization reached the evaluated weights and
# that the model is sensitive enough to quantization for the SpQR bound to mean something, i.e.
# that this test can fail. A barely trained model is not: on the CPU-trained step-168 export
# (2026-11-23; ppl 236 on this slice) RTN 3-bit per row cost +0.23 % and even RTN 2-bit only
# +1.6 % (an independent PyTorch RTN agreed to 0.005 %), while zeroing every layer's weights cost
# 13x; its weights were still dominated by their random initialisation. Such a model fails here.
RTN3_MIN_REL_INCREASE = 0.05

# Calibration: windows of 512 tokens from models/reference/calibration.txt (validation split), seed
# 0; SpQR takes 32 of them, the configuration of docs/reference-model.md section 6.
SEQLEN = 512
THREADS = 2

SPQR_FLAGS = ["--method", "spqr", "--wbits", "4", "--beta1", "16", "--beta2", "16",
              "--stats_bits", "3", "--tau", "0.2", "--nsamples", "32"]
# RTN never looks at the calibration data (spqr-quantize still runs it through the model, only to
# report per-layer errors): one window gives byte-identical weights to 32 (checked 2026-11-23) and
# saves a minute of the time budget.
RTN3_FLAGS = ["--method", "rtn", "--wbits", "3", "--beta1", "0", "--stats_bits", "16",
              "--act_order=false", "--tau", "inf", "--nsamples", "1"]

WORKDIR = None
RESULTS = {}  # name -> spqr-eval JSON (plus "bits" for quantized models)
VOCAB_SIZE = None


def parse_args():
    parser = argparse.ArgumentParser()
    for flag in ("--quantize", "--eval", "--model", "--calibration", "--text"):
        parser.add_argument(flag, required=True)
    return parser.parse_known_args()


def run(cmd, timeout=300):
    env = dict(os.environ)
    # OpenMP workers that spin while idle steal the cores from the other process on a shared
    # 2-core CI runner; passive waiting keeps the wall time predictable.
    env.setdefault("OMP_WAIT_POLICY", "passive")
    result = subprocess.run(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            timeout=timeout, env=env)
    if result.returncode != 0:
        raise AssertionError(f"{' '.join(cmd)} exited {result.returncode}:\n{result.stderr[-4000:]}")
    return result.stdout


def quantize(name, flags):
    out = os.path.join(WORKDIR, name)
    start = time.monotonic()
    run([ARGS.quantize, "--model", ARGS.model, "--out", out, "--calibration", ARGS.calibration,
         "--seqlen", str(SEQLEN), "--seed", "0", "--threads",
         str(THREADS)] + flags)
    with open(os.path.join(out, "quantization_report.json")) as f:
        report = json.load(f)
    report["wall_seconds_measured"] = time.monotonic() - start
    return out, report


def evaluate(model_dir):
    return json.loads(run([ARGS.eval, "--model", model_dir, "--text", ARGS.text, "--seqlen",
                           str(SEQLEN), "--threads", str(THREADS)]))


def setUpModule():
    global WORKDIR, VOCAB_SIZE
    with open(os.path.join(ARGS.model, "config.json")) as f:
        VOCAB_SIZE = json.load(f)["vocab_size"]
    WORKDIR = tempfile.mkdtemp(prefix="spqr_quality_guard_")
    RESULTS["fp16"] = evaluate(ARGS.model)
    for name, flags in (("spqr", SPQR_FLAGS), ("rtn3", RTN3_FLAGS)):
        model_dir, report = quantize(name, flags)
        RESULTS[name] = evaluate(model_dir)
        RESULTS[name]["report"] = report
        shutil.rmtree(model_dir, ignore_errors=True)
    # One line per model so CI logs show the numbers whether or not the assertions pass.
    base = RESULTS["fp16"]["ppl"]
    for name in ("fp16", "spqr", "rtn3"):
        r = RESULTS[name]
        rep = r.get("report")
        bits = (f"bits {rep['avg_bits_formula']:.3f} formula / {rep['avg_bits_real']:.3f} real, "
                f"outliers {rep['outlier_share']:.4%}, quantize {rep['wall_seconds_measured']:.1f} s"
                if rep else "bits 16 (bf16 checkpoint)")
        print(f"quality_guard: {name:5s} ppl {r['ppl']:.4f} ({r['ppl'] / base - 1:+.3%} vs fp16) "
              f"on {r['windows']} windows x {r['seq_len']}; {bits}; eval {r['seconds']:.1f} s",
              file=sys.stderr, flush=True)


def tearDownModule():
    if WORKDIR is not None:
        shutil.rmtree(WORKDIR, ignore_errors=True)


class QualityGuardTest(unittest.TestCase):

    def test_all_models_scored_the_same_windows(self):
        # The slice is ~64 KB (~21 k tokens): about 40 windows. Fewer would make the bounds noisy.
        self.assertGreaterEqual(RESULTS["fp16"]["windows"], 32, RESULTS["fp16"])
        for name in ("spqr", "rtn3"):
            for key in ("seq_len", "windows", "tokens_scored"):
                self.assertEqual(RESULTS[name][key], RESULTS["fp16"][key], (name, key))

    def test_fp16_perplexity_is_sane(self):
        ppl = RESULTS["fp16"]["ppl"]
        self.assertTrue(math.isfinite(ppl) and ppl > 1.0, ppl)
        # A uniform guess over the vocabulary scores exactly VOCAB_SIZE; a trained model must beat it.
        self.assertLess(ppl, VOCAB_SIZE, "the reference model is no better than a uniform guess")

    def test_spqr_configuration_is_the_near_lossless_one(self):
        # The bound below is the paper's claim for ~4.6 bits; if tau 0.2 started to pick so many
        # outliers that the model is no longer a ~4.6-bit one, the comparison would be unfair.
        report = RESULTS["spqr"]["report"]
        self.assertGreaterEqual(report["avg_bits_formula"], 4.6, report["avg_bits_formula"])
        self.assertLess(report["avg_bits_formula"], 5.0, report["avg_bits_formula"])

    def test_spqr_is_within_bound_of_fp16(self):
        fp16, spqr = RESULTS["fp16"]["ppl"], RESULTS["spqr"]["ppl"]
        self.assertLessEqual(
            spqr, fp16 * (1 + SPQR_MAX_REL_INCREASE),
            f"SpQR w4 16x16 tau 0.2 perplexity {spqr:.4f} is {spqr / fp16 - 1:+.3%} over fp16 "
            f"{fp16:.4f}; the bound is +{SPQR_MAX_REL_INCREASE:.1%}")

    def test_rtn3_is_clearly_worse_than_fp16(self):
        fp16, rtn3 = RESULTS["fp16"]["ppl"], RESULTS["rtn3"]["ppl"]
        self.assertGreaterEqual(
            rtn3, fp16 * (1 + RTN3_MIN_REL_INCREASE),
            f"RTN 3-bit per-row perplexity {rtn3:.4f} is only {rtn3 / fp16 - 1:+.3%} over fp16 "
            f"{fp16:.4f}. Either quantization did not reach the evaluated weights, or the model in "
            f"models/reference is too weakly trained to be sensitive to quantization (the CPU-trained "
            f"step-168 model of 2026-11-23 was: +0.2 %); such a model cannot guard quality.")


if __name__ == "__main__":
    ARGS, rest = parse_args()
    unittest.main(argv=[sys.argv[0]] + rest, verbosity=2)
