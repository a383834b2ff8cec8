#!/usr/bin/python3
"""End-to-end SpQR serving test (issue 3): quantize the test model with the real spqr-quantize,
measure its perplexity with the real spqr-eval, serve it with the real spqr-server, and check over
gRPC that GetModelInfo reports the quantization, a greedy Generate streams tokens, and Score over
the very windows spqr-eval evaluates gives the same total NLL and perplexity.

Run through ctest (label "integration"), or by hand:
  /usr/bin/python3 tests/integration/spqr_serving_integration_test.py \
      --quantize build/quantizer/spqr-quantize --eval build/quantizer/spqr-eval \
      --server build/server/spqr-server --client build/server/spqr-client \
      --model tests/data/test-model --calibration tools/test_model_text.txt \
      --stubs build/python_stubs
Every server started here is killed at the end; the quantized model lives in a temp dir.
"""
import argparse
import json
import math
import os
import shutil
import subprocess
import sys
import tempfile
import unittest

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import server_harness as harness  # noqa: E402

ARGS = None
EVAL_SEQLEN = 64  # spqr-eval window; small so the Score calls stay fast
EVAL_TEXT_CHARS = 4000  # slice of the calibration text used as evaluation text
# Relative tolerance between spqr-eval's total NLL and the sum over Score calls. spqr-eval runs its
# reference forward (--forward reference: the quantizer's fp32 forward over the reference decoder's
# weights), independent of the server's CPU backend and paged-KV runtime; both are f32 and the
# measured difference is ~1e-10 (2026-11-23).
REL_TOL = 1e-4

WORKDIR = None
SPQR_DIR = None
TEXT_PATH = None
EVAL = None  # spqr-eval's JSON output
SERVER = None


def parse_args():
    parser = argparse.ArgumentParser()
    for flag in ("--quantize", "--eval", "--server", "--client", "--model", "--calibration",
                 "--stubs"):
        parser.add_argument(flag, required=True)
    return parser.parse_known_args()


def run(cmd, timeout=60):
    result = subprocess.run(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            timeout=timeout)
    if result.returncode != 0:
        raise AssertionError(f"{' '.join(cmd)} exited {result.returncode}:\n{result.stderr}")
    return result.stdout


def setUpModule():
    global WORKDIR, SPQR_DIR, TEXT_PATH, EVAL, SERVER
    WORKDIR = tempfile.mkdtemp(prefix="spqr_e2e_")
    SPQR_DIR = os.path.join(WORKDIR, "test-model-spqr")
    run([ARGS.quantize, "--model", ARGS.model, "--out", SPQR_DIR, "--calibration",
         ARGS.calibration, "--method", "spqr", "--wbits", "4", "--beta1", "16", "--beta2", "16",
         "--stats_bits", "3", "--tau", "0.2", "--nsamples", "8", "--seqlen", "128", "--seed", "0",
         "--threads", "2"])
    with open(ARGS.calibration, encoding="utf-8") as f:
        text = f.read()[:EVAL_TEXT_CHARS]
    TEXT_PATH = os.path.join(WORKDIR, "eval.txt")
    with open(TEXT_PATH, "w", encoding="utf-8") as f:
        f.write(text)
    EVAL = json.loads(run([ARGS.eval, "--model", SPQR_DIR, "--text", TEXT_PATH, "--seqlen",
                           str(EVAL_SEQLEN), "--threads", "2", "--forward", "reference"]))
    # The harness builds the server command line from harness.ARGS (server binary, model dir).
    harness.ARGS = argparse.Namespace(server=ARGS.server, client=ARGS.client, model=SPQR_DIR,
                                      stubs=ARGS.stubs)
    # The exact SpQR kernel: this test compares Score with spqr-eval to 1e-4 relative, which the
    # int8 kernel's activation rounding does not promise on this random-weight model (its cost on
    # a trained model is bounded by the quality guard instead).
    SERVER = harness.ServerProcess(extra_flags=("--model.spqr_cpu_kernel", "exact"))
    harness.SERVER = SERVER
    SERVER.wait_serving()


def tearDownModule():
    if SERVER is not None:
        SERVER.kill()
    if WORKDIR is not None:
        shutil.rmtree(WORKDIR, ignore_errors=True)


def eval_windows():
    """Token id windows exactly as spqr-eval cuts them (quantizer/perplexity.cc): the whole file
    encoded without bos, non-overlapping windows of seq_len, the tail that does not fill a window
    dropped."""
    sp = sentencepiece.SentencePieceProcessor(model_file=os.path.join(SPQR_DIR,
                                                                      "tokenizer.model"))
    with open(TEXT_PATH, encoding="utf-8") as f:
        ids = sp.encode(f.read())
    n = len(ids) // EVAL_SEQLEN
    return [ids[w * EVAL_SEQLEN:(w + 1) * EVAL_SEQLEN] for w in range(n)]


class QuantizedModelTest(unittest.TestCase):

    def test_quantizer_wrote_a_spqr_model(self):
        with open(os.path.join(SPQR_DIR, "config.json")) as f:
            config = json.load(f)
        self.assertEqual(config["quantization_config"]["quant_method"], "spqr")
        self.assertTrue(os.path.exists(os.path.join(SPQR_DIR, "tokenizer.model")))

    def test_eval_reports_consistent_numbers(self):
        self.assertEqual(EVAL["seq_len"], EVAL_SEQLEN)
        self.assertGreaterEqual(EVAL["windows"], 8, EVAL)
        self.assertEqual(EVAL["tokens_scored"], EVAL["windows"] * (EVAL_SEQLEN - 1))
        self.assertAlmostEqual(math.exp(EVAL["mean_loss"]), EVAL["ppl"], delta=1e-6 * EVAL["ppl"])
        # The test model has random weights, so only finiteness is asserted about the value.
        self.assertTrue(math.isfinite(EVAL["total_nll"]) and EVAL["total_nll"] > 0, EVAL)


class ServingTest(unittest.TestCase):

    def test_model_info_reports_spqr(self):
        info = SERVER.stub.GetModelInfo(pb.GetModelInfoRequest(), timeout=10)
        self.assertEqual(info.quantization.method, "spqr")

    def test_greedy_generate_streams_tokens(self):
        responses, text, ids = harness.stream_all(harness.greedy(16, text="Once upon a time"))
        self.assertGreaterEqual(len(responses), 2, "the output should be streamed in pieces")
        self.assertEqual(len(ids), 16)
        self.assertEqual(responses[-1].finish_reason, pb.FINISH_REASON_LENGTH)
        self.assertTrue(text)
        # Greedy is deterministic: a second run gives the same tokens.
        _, _, again = harness.stream_all(harness.greedy(16, text="Once upon a time"))
        self.assertEqual(again, ids)

    def test_score_matches_spqr_eval_perplexity(self):
        windows = eval_windows()
        self.assertEqual(len(windows), EVAL["windows"], "window cut differs from spqr-eval's")
        total_nll = 0.0
        loss_sum = 0.0
        for window in windows:
            response = SERVER.stub.Score(
                pb.ScoreRequest(token_ids=pb.TokenIds(ids=window)), timeout=60)
            self.assertEqual(response.num_scored_tokens, EVAL_SEQLEN - 1)
            self.assertEqual([t.token_id for t in response.token_logprobs], window[1:])
            # logprob is a float per token; sum_logprob is the server's double sum of them.
            per_token = -sum(t.logprob for t in response.token_logprobs)
            self.assertAlmostEqual(per_token, -response.sum_logprob,
                                   delta=1e-5 * abs(response.sum_logprob))
            window_nll = -response.sum_logprob
            total_nll += window_nll
            loss_sum += window_nll / (EVAL_SEQLEN - 1)
        ppl = math.exp(loss_sum / len(windows))
        rel_nll = abs(total_nll - EVAL["total_nll"]) / EVAL["total_nll"]
        rel_ppl = abs(ppl - EVAL["ppl"]) / EVAL["ppl"]
        print(f"\nspqr-eval total_nll={EVAL['total_nll']:.6f} ppl={EVAL['ppl']:.6f}; "
              f"Score total_nll={total_nll:.6f} ppl={ppl:.6f}; "
              f"relative differences {rel_nll:.2e} / {rel_ppl:.2e}", file=sys.stderr)
        self.assertLessEqual(rel_nll, REL_TOL)
        self.assertLessEqual(rel_ppl, REL_TOL)


if __name__ == "__main__":
    ARGS, rest = parse_args()
    sys.path.insert(0, ARGS.stubs)
    import grpc  # noqa: E402
    import health_pb2  # noqa: E402
    import health_pb2_grpc  # noqa: E402
    import sentencepiece  # noqa: E402
    from spqr.v1 import spqr_pb2 as pb  # noqa: E402
    from spqr.v1 import spqr_pb2_grpc  # noqa: E402
    # The harness module resolves these names at call time.
    harness.grpc, harness.pb, harness.spqr_pb2_grpc = grpc, pb, spqr_pb2_grpc
    harness.health_pb2, harness.health_pb2_grpc = health_pb2, health_pb2_grpc
    unittest.main(argv=[sys.argv[0], *rest], verbosity=2)
