#!/usr/bin/python3
"""Quantization-quality regression guard (issue 7, section 4).

Quantizes the reference model (models/reference, whatever weights are committed there; override
with the environment variable SPQR_QUALITY_GUARD_MODEL=<dir>) with the real spqr-quantize:
  * SpQR, the paper's near-lossless configuration: w4, beta1 = beta2 = 16, 3-bit statistics,
    tau 0.2 (about 4.6 bits per parameter), the configuration under test;
  * RTN 2-bit per row (one fp16 scale and zero per output row, no outliers, no Hessian): a crude
    control whose damage sets the scale against which SpQR's damage is judged;
  * RTN 3-bit per row: printed for information only, no assertion (see RTN3_FLAGS);
and measures, with the real spqr-eval, the perplexity of the dense model (the "fp16" baseline;
the checkpoint is bf16) and of every quantized model on every 512-token window of a held-out slice
of the corpus's test split (tests/data/heldout/, never used for training or calibration).

With d_x = ppl_x / ppl_fp16 - 1 (the relative damage of configuration x), it asserts:
  * the dense perplexity is finite and below the vocabulary size (better than a uniform guess);
  * SpQR's average bits (formula) are in [4.6, 5.0), i.e. it is the ~4.6-bit configuration;
  * d_rtn2 > RTN2_MIN_DAMAGE: quantization reached the evaluated weights and the model and slice
    can register damage at all; otherwise nothing below could fail, and the test says so;
  * d_spqr <= SPQR_MAX_DAMAGE (absolute bound, the binding one on a well-trained model);
  * d_spqr <= SPQR_MAX_SHARE_OF_RTN2 * d_rtn2 (scale-free bound, the binding one on a weakly
    trained model whose perplexity barely moves under any quantization).
No bound is tuned to one model's numbers; each is justified where it is defined.

Run through ctest (`ctest -R quality_guard`, labels integration;quality), or by hand:
  /usr/bin/python3 tests/integration/quality_guard_test.py \\
      --quantize build/quantizer/spqr-quantize --eval build/quantizer/spqr-eval \\
      --model models/reference --calibration models/reference/calibration.txt \\
      --text tests/data/heldout/reference-test-slice.txt
  SPQR_QUALITY_GUARD_MODEL=/path/to/export ctest -R quality_guard -V   # another model
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

# Absolute bound: d_spqr <= 2 %. The paper's claim for w4 beta1 = beta2 = 16, 3-bit statistics,
# tau 0.2 (~4.6 bits) is "near-lossless": +0.8 % to +1.1 % over fp16 on LLaMA 7B-65B (WikiText-2;
# ../shared/docs/spqr-method.md section 7). We allow twice that because (a) our model is ~1000x
# smaller than the paper's smallest (rows of 256 or 768 weights), and small models tend to be more
# fragile under quantization; (b) the slice is only ~40 windows (~21 k scored tokens), so the
# measured increase varies by a few tenths of a percent from slice to slice even though all models
# score exactly the same tokens. A real defect (a broken statistic, permutation or outlier path) on
# a trained model costs tens of percent or a multiple of the perplexity, far above 2 %. On a model
# that barely notices quantization this bound is loose; the relative one below then binds.
SPQR_MAX_DAMAGE = 0.02

# Control: RTN 2-bit per row must cost more than 0.5 %. Four levels per row with one scale per
# 256-768 weights is as crude as weight quantization gets (published RTN numbers are +10-13 %
# already at 4 bits on LLaMA; spqr-method.md section 7). If even this leaves the perplexity within
# 0.5 % -- about the slice-to-slice noise of a relative increase on ~21 k tokens -- then either
# quantization did not reach the evaluated weights (a quantizer or evaluator that silently writes
# or reads the dense model) or the model is so insensitive that no bound on SpQR could fail; either
# way the test cannot guard quality and must say so rather than pass. (Measured: the CPU-trained
# step-168 export of 2026-11-23 lost +1.6 % under RTN 2-bit, step 277 +1.1 %.)
RTN2_MIN_DAMAGE = 0.005

# Scale-free bound: d_spqr <= 0.25 * d_rtn2, i.e. SpQR at ~4.6 bits must keep at least 75 % of the
# quality that crude 2-bit RTN loses on the same model and slice. Per-weight rounding error falls
# about 2x per extra bit, so a 4-bit grid on groups of 16 with outliers has ~4-8x smaller error
# than a 2-bit grid per row; even allowing for the non-linear effect on perplexity, a correctly
# working SpQR should land far below a quarter of RTN 2-bit's damage (the paper: SpQR ~4.6 bits
# +1 %, RTN 3-bit per row several tens of percent). A SpQR whose damage approaches RTN 2-bit's is
# behaving like a much coarser quantizer. Being a ratio, this bound means the same on a model that
# barely moves (weakly trained: d_rtn2 a few percent, the bound a fraction of a percent) as on a
# well-trained one (d_rtn2 large, the absolute 2 % bound binds first).
SPQR_MAX_SHARE_OF_RTN2 = 0.25

# Calibration: windows of 512 tokens from the --calibration text (validation split), seed 0; SpQR
# takes 32 of them, the configuration of docs/reference-model.md section 6.
SEQLEN = 512
THREADS = 2

SPQR_FLAGS = ["--method", "spqr", "--wbits", "4", "--beta1", "16", "--beta2", "16",
              "--stats_bits", "3", "--tau", "0.2", "--nsamples", "32"]
# RTN never looks at the calibration data (spqr-quantize still runs it through the model, only to
# report per-layer errors): one window gives byte-identical weights to 32 (checked 2026-11-23) and
# saves time.
RTN_FLAGS = ["--method", "rtn", "--beta1", "0", "--stats_bits", "16", "--act_order=false",
             "--tau", "inf", "--nsamples", "1"]
RTN2_FLAGS = RTN_FLAGS + ["--wbits", "2"]
# RTN 3-bit is printed for information only (CI logs then show where SpQR sits between the two RTN
# points); it is not asserted on, because how much 3 bits per row costs depends on how well the
# model is trained (+0.2 % on the step-277 CPU model), and RTN 2-bit already serves as the control.
RTN3_FLAGS = RTN_FLAGS + ["--wbits", "3"]

# The int8 CPU kernel (activations rounded to int8 per 16 columns) may move perplexity by at most
# 0.02 % either way against the exact kernel on the whole slice (issue 11); measured -0.006 %
# (bench/results/cpu-kernels/). Fewer windows are too noisy for this bound (12 windows: -0.025 %).
INT8_MAX_RELATIVE = 2e-4
# The same bound for the dense bf16 kernel (activations rounded to bf16), which the server picks by
# default on CPUs with AVX512-BF16; measured -0.0007 % on the reference model. Checked on the bf16
# checkpoint where this CPU has the instructions.
BF16_MAX_RELATIVE = 2e-4
KERNEL_PPL_WINDOWS = 0  # all

RUNS = (("spqr", SPQR_FLAGS), ("rtn2", RTN2_FLAGS), ("rtn3", RTN3_FLAGS))

WORKDIR = None
RESULTS = {}  # name -> spqr-eval JSON (plus "report" for quantized models)
VOCAB_SIZE = None


def parse_args():
    parser = argparse.ArgumentParser()
    for flag in ("--quantize", "--eval", "--model", "--calibration", "--text"):
        parser.add_argument(flag, required=True)
    # spqr-kernel-ppl: the CPU backend's int8 SpQR kernel against its exact kernel on the same
    # windows (docs/cpu-performance.md); skipped when not given.
    parser.add_argument("--kernel-ppl")
    args, rest = parser.parse_known_args()
    # Lets CI or a developer point the guard at another export (e.g. a candidate model before it is
    # committed) without editing the ctest registration.
    args.model = os.environ.get("SPQR_QUALITY_GUARD_MODEL") or args.model
    return args, rest


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
    # The fp32 reference forward: it measures exactly the quantizer's W_hat, independently of the
    # serving kernels (checked separately below with spqr-kernel-ppl), and it is fast on the
    # per-row RTN controls, which the engine's exact kernel runs on its slow decode-then-dot path
    # (~55 s each): this keeps the guard inside its 5-minute budget on 2 cores.
    return json.loads(run([ARGS.eval, "--model", model_dir, "--text", ARGS.text, "--seqlen",
                           str(SEQLEN), "--threads", str(THREADS), "--forward", "reference"]))


def damage(name):
    """Relative perplexity increase of a quantized model over the dense one."""
    return RESULTS[name]["ppl"] / RESULTS["fp16"]["ppl"] - 1


def cpu_has_flag(flag):
    try:
        with open("/proc/cpuinfo") as f:
            return any(line.startswith("flags") and flag in line.split() for line in f)
    except OSError:
        return False


def setUpModule():
    global WORKDIR, VOCAB_SIZE
    start = time.monotonic()
    with open(os.path.join(ARGS.model, "config.json")) as f:
        VOCAB_SIZE = json.load(f)["vocab_size"]
    WORKDIR = tempfile.mkdtemp(prefix="spqr_quality_guard_")
    RESULTS["fp16"] = evaluate(ARGS.model)
    if ARGS.kernel_ppl and cpu_has_flag("avx512_bf16"):
        RESULTS["dense_kernel_ppl"] = json.loads(run([
            ARGS.kernel_ppl, "--model", ARGS.model, "--text", ARGS.text, "--seqlen", str(SEQLEN),
            "--windows", str(KERNEL_PPL_WINDOWS), "--threads", str(THREADS), "--kernels",
            "exact,bf16"]))
        print(f"quality_guard: bf16 vs exact dense kernel "
              f"{RESULTS['dense_kernel_ppl']['bf16_vs_exact_relative']:+.4%} "
              f"(bound {BF16_MAX_RELATIVE:.2%})", file=sys.stderr)
    for name, flags in RUNS:
        model_dir, report = quantize(name, flags)
        RESULTS[name] = evaluate(model_dir)
        RESULTS[name]["report"] = report
        if name == "spqr" and ARGS.kernel_ppl:
            RESULTS["kernel_ppl"] = json.loads(run([
                ARGS.kernel_ppl, "--model", model_dir, "--text", ARGS.text, "--seqlen",
                str(SEQLEN), "--windows", str(KERNEL_PPL_WINDOWS), "--threads", str(THREADS)]))
            print(f"quality_guard: int8 vs exact SpQR kernel "
                  f"{RESULTS['kernel_ppl']['int8_vs_exact_relative']:+.4%} "
                  f"(bound {INT8_MAX_RELATIVE:.2%})", file=sys.stderr)
        shutil.rmtree(model_dir, ignore_errors=True)
    # One line per model so CI logs show the numbers whether or not the assertions pass.
    print(f"quality_guard: model {ARGS.model}", file=sys.stderr)
    for name in ["fp16"] + [name for name, _ in RUNS]:
        r = RESULTS[name]
        rep = r.get("report")
        bits = (f"bits {rep['avg_bits_formula']:.3f} formula / {rep['avg_bits_real']:.3f} real, "
                f"outliers {rep['outlier_share']:.4%}, quantize {rep['wall_seconds_measured']:.1f} s"
                if rep else "bits 16 (bf16 checkpoint)")
        print(f"quality_guard: {name:5s} ppl {r['ppl']:.4f} ({damage(name):+.3%} vs fp16) "
              f"on {r['windows']} windows x {r['seq_len']}; {bits}; eval {r['seconds']:.1f} s",
              file=sys.stderr)
    d_rtn2 = damage("rtn2")
    print(f"quality_guard: d_spqr {damage('spqr'):+.3%}, bounds: <= {SPQR_MAX_DAMAGE:.1%} and "
          f"<= {SPQR_MAX_SHARE_OF_RTN2:.2f} x d_rtn2 = {SPQR_MAX_SHARE_OF_RTN2 * d_rtn2:+.3%}; "
          f"d_rtn2 must be > {RTN2_MIN_DAMAGE:.1%}; setup {time.monotonic() - start:.1f} s",
          file=sys.stderr, flush=True)


def tearDownModule():
    if WORKDIR is not None:
        shutil.rmtree(WORKDIR, ignore_errors=True)


class QualityGuardTest(unittest.TestCase):

    def test_all_models_scored_the_same_windows(self):
        # The slice is ~64 KB (~21 k tokens): about 40 windows. Fewer would make the bounds noisy.
        self.assertGreaterEqual(RESULTS["fp16"]["windows"], 32, RESULTS["fp16"])
        for name, _ in RUNS:
            for key in ("seq_len", "windows", "tokens_scored"):
                self.assertEqual(RESULTS[name][key], RESULTS["fp16"][key], (name, key))

    def test_int8_kernel_costs_at_most_two_hundredths_of_a_percent(self):
        if "kernel_ppl" not in RESULTS:
            self.skipTest("no --kernel-ppl given")
        r = RESULTS["kernel_ppl"]
        self.assertEqual(r["kernels"]["int8"]["scored_tokens"], r["kernels"]["exact"]["scored_tokens"])
        self.assertLessEqual(abs(r["int8_vs_exact_relative"]), INT8_MAX_RELATIVE, r)

    def test_dense_bf16_kernel_costs_at_most_two_hundredths_of_a_percent(self):
        if "dense_kernel_ppl" not in RESULTS:
            self.skipTest("no --kernel-ppl given or no AVX512-BF16 on this CPU")
        r = RESULTS["dense_kernel_ppl"]
        self.assertEqual(r["kernels"]["bf16"]["scored_tokens"], r["kernels"]["exact"]["scored_tokens"])
        self.assertLessEqual(abs(r["bf16_vs_exact_relative"]), BF16_MAX_RELATIVE, r)

    def test_fp16_perplexity_is_sane(self):
        ppl = RESULTS["fp16"]["ppl"]
        self.assertTrue(math.isfinite(ppl) and ppl > 1.0, ppl)
        # A uniform guess over the vocabulary scores exactly VOCAB_SIZE; a trained model must beat it.
        self.assertLess(ppl, VOCAB_SIZE, "the reference model is no better than a uniform guess")

    def test_spqr_configuration_is_the_near_lossless_one(self):
        # The bounds below are about the paper's ~4.6-bit configuration; if tau 0.2 started to pick
        # so many outliers (or the statistics cost so much) that the model is no longer a ~4.6-bit
        # one, the comparison would be unfair; below 4.6 something is not being stored or counted.
        report = RESULTS["spqr"]["report"]
        self.assertGreaterEqual(report["avg_bits_formula"], 4.6, report["avg_bits_formula"])
        self.assertLess(report["avg_bits_formula"], 5.0, report["avg_bits_formula"])

    def test_rtn2_control_damages_the_model(self):
        d_rtn2 = damage("rtn2")
        self.assertTrue(math.isfinite(d_rtn2), RESULTS["rtn2"])
        self.assertGreater(
            d_rtn2, RTN2_MIN_DAMAGE,
            f"RTN 2-bit per-row perplexity {RESULTS['rtn2']['ppl']:.4f} is only {d_rtn2:+.3%} over "
            f"fp16 {RESULTS['fp16']['ppl']:.4f} (must be > {RTN2_MIN_DAMAGE:.1%}). Either "
            f"quantization did not reach the evaluated weights, or the model in {ARGS.model} is too "
            f"insensitive to quantization for any bound on SpQR to fail; it cannot guard quality.")

    def test_spqr_is_within_absolute_bound_of_fp16(self):
        d_spqr = damage("spqr")
        self.assertLessEqual(
            d_spqr, SPQR_MAX_DAMAGE,
            f"SpQR w4 16x16 tau 0.2 perplexity {RESULTS['spqr']['ppl']:.4f} is {d_spqr:+.3%} over "
            f"fp16 {RESULTS['fp16']['ppl']:.4f}; the bound is +{SPQR_MAX_DAMAGE:.1%}")

    def test_spqr_keeps_most_of_what_rtn2_loses(self):
        d_spqr, d_rtn2 = damage("spqr"), damage("rtn2")
        self.assertLessEqual(
            d_spqr, SPQR_MAX_SHARE_OF_RTN2 * d_rtn2,
            f"SpQR w4 16x16 tau 0.2 costs {d_spqr:+.3%} over fp16, more than "
            f"{SPQR_MAX_SHARE_OF_RTN2:.2f} x the {d_rtn2:+.3%} that RTN 2-bit per row costs "
            f"(bound {SPQR_MAX_SHARE_OF_RTN2 * d_rtn2:+.3%}): SpQR at ~4.6 bits behaves like a much "
            f"coarser quantizer than it is")


if __name__ == "__main__":
    ARGS, rest = parse_args()
    unittest.main(argv=[sys.argv[0]] + rest, verbosity=2)
