#!/usr/bin/python3
"""Integration test of spqr-server's API on one shared server: health, reflection, model info,
Generate/GenerateUnary, Score, request validation, cancellation, Abort, /metrics and the
spqr-client binary. Starts the real binary on 127.0.0.1 with ephemeral ports (server_harness.py)
and drives it over gRPC with stubs generated at build time (proto/CMakeLists.txt,
spqr_proto_python). Start-up errors, overload and SIGTERM draining, which need servers of their
own, are in server_integration_lifecycle_test.py.

Run through ctest (label "integration"), or by hand:
  /usr/bin/python3 tests/integration/server_integration_test.py --server build/server/spqr-server \
      --client build/server/spqr-client --model tests/data/test-model --stubs build/python_stubs
Every wait is bounded; every server started here is killed at the end.
"""
import json
import os
import re
import subprocess
import sys
import time
import unittest

import server_harness as harness
from server_harness import LONG, ServerProcess, greedy, stream_all

ARGS = None
SERVER = None
HEALTH_SEQUENCE = None
SP = None  # the model's SentencePiece processor, to check token counts independently
# Set in __main__: the stubs' modules (harness.import_stubs), sentencepiece and descriptor_pb2.
grpc = pb = health_pb2 = reflection_pb2 = reflection_pb2_grpc = None
sentencepiece = descriptor_pb2 = None


def setUpModule():
    global SERVER, HEALTH_SEQUENCE, SP
    SP = sentencepiece.SentencePieceProcessor(model_file=os.path.join(ARGS.model,
                                                                      "tokenizer.model"))
    SERVER = ServerProcess()
    harness.SERVER = SERVER  # stream_all talks to harness.SERVER
    HEALTH_SEQUENCE = SERVER.wait_serving()


def tearDownModule():
    if SERVER is not None:
        SERVER.kill()


def config_json():
    with open(os.path.join(ARGS.model, "config.json")) as f:
        return json.load(f)

class HealthAndReflectionTest(unittest.TestCase):

    def test_health_is_not_serving_until_ready_then_serving(self):
        NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING
        SERVING = health_pb2.HealthCheckResponse.SERVING
        self.assertEqual(HEALTH_SEQUENCE[-1], SERVING)
        # Whatever was seen before readiness was NOT_SERVING, never SERVING then NOT_SERVING.
        self.assertTrue(all(s == NOT_SERVING for s in HEALTH_SEQUENCE[:-1]), HEALTH_SEQUENCE)
        self.assertEqual(SERVER.health_status("spqr.v1.SpqrService"), SERVING)
        with self.assertRaises(grpc.RpcError) as error:
            SERVER.health_status("no.such.Service")
        self.assertEqual(error.exception.code(), grpc.StatusCode.NOT_FOUND)

    def test_reflection_lists_the_services(self):
        stub = reflection_pb2_grpc.ServerReflectionStub(SERVER.channel)
        requests = [reflection_pb2.ServerReflectionRequest(list_services=""),
                    reflection_pb2.ServerReflectionRequest(
                        file_containing_symbol="spqr.v1.SpqrService")]
        responses = list(stub.ServerReflectionInfo(iter(requests), timeout=10))
        names = {s.name for s in responses[0].list_services_response.service}
        self.assertIn("spqr.v1.SpqrService", names)
        self.assertIn("grpc.health.v1.Health", names)
        descriptor = descriptor_pb2.FileDescriptorProto.FromString(
            responses[1].file_descriptor_response.file_descriptor_proto[0])
        self.assertEqual(descriptor.package, "spqr.v1")
        methods = {m.name for s in descriptor.service for m in s.method}
        self.assertEqual(methods, {"Generate", "GenerateUnary", "Chat", "ChatUnary", "Score",
                                   "GetModelInfo", "Abort"})


class ModelInfoTest(unittest.TestCase):

    def test_model_info_matches_the_checkpoint(self):
        info = SERVER.stub.GetModelInfo(pb.GetModelInfoRequest(), timeout=10)
        config = config_json()
        arch = info.architecture
        self.assertEqual(arch.model_type, config["model_type"])
        self.assertEqual(arch.vocab_size, config["vocab_size"])
        self.assertEqual(arch.hidden_size, config["hidden_size"])
        self.assertEqual(arch.num_hidden_layers, config["num_hidden_layers"])
        self.assertEqual(arch.num_key_value_heads, config["num_key_value_heads"])
        self.assertEqual(arch.max_position_embeddings, config["max_position_embeddings"])
        self.assertEqual(info.model_name, os.path.basename(os.path.normpath(ARGS.model)))
        self.assertEqual(info.bos_token_id, SP.bos_id())
        self.assertIn(SP.eos_id(), info.eos_token_ids)
        self.assertEqual(info.backend, "cpu")
        self.assertEqual(info.quantization.method, "none")
        self.assertIn(info.quantization.weight_dtype, ("bf16", "f16", "f32"))
        # The SpQR parameters stay unset for a dense checkpoint.
        self.assertEqual(info.quantization.wbits, 0)
        self.assertEqual(info.quantization.format_version, 0)
        self.assertEqual(info.quantization.calibration, "")
        self.assertEqual(info.limits.kv_block_size, 16)
        self.assertGreater(info.limits.kv_blocks_total, 0)
        self.assertEqual(info.limits.max_context_tokens, config["max_position_embeddings"])
        self.assertEqual(info.limits.max_running_requests, 64)
        self.assertTrue(info.server_version)


class GenerateTest(unittest.TestCase):

    def test_stream_and_unary_agree_and_count_tokens(self):
        request = greedy(24, text="Once upon a time")
        responses, text, ids = stream_all(request)
        self.assertGreaterEqual(len(responses), 2, "the output should be streamed in pieces")
        for r in responses[:-1]:
            self.assertEqual(r.finish_reason, pb.FINISH_REASON_UNSPECIFIED)
        last = responses[-1]
        self.assertEqual(last.finish_reason, pb.FINISH_REASON_LENGTH)
        self.assertEqual(len(ids), 24)
        self.assertEqual(last.usage.completion_tokens, 24)
        self.assertEqual(last.usage.prompt_tokens, 1 + len(SP.encode("Once upon a time")))
        self.assertTrue(all(r.request_id == last.request_id for r in responses))
        unary = SERVER.stub.GenerateUnary(request, timeout=60)
        self.assertEqual(list(unary.token_ids), ids)
        self.assertEqual(unary.text, text)
        self.assertEqual(unary.finish_reason, pb.FINISH_REASON_LENGTH)
        self.assertEqual(unary.usage.completion_tokens, 24)

    def test_token_id_prompt_equals_text_prompt(self):
        text_ids = stream_all(greedy(12, text="The cat sat"))[2]
        prompt = [SP.bos_id()] + SP.encode("The cat sat")
        token_ids = stream_all(greedy(12, token_ids=pb.TokenIds(ids=prompt)))[2]
        self.assertEqual(text_ids, token_ids)
        no_bos = stream_all(greedy(12, text="The cat sat", add_bos=False))[0][-1]
        self.assertEqual(no_bos.usage.prompt_tokens, len(prompt) - 1)

    def test_client_request_id_is_echoed(self):
        request = greedy(3, text="hi", request_id="client-42")
        responses, _, _ = stream_all(request)
        self.assertTrue(all(r.request_id == "client-42" for r in responses))

    def test_logprobs_with_top_alternatives(self):
        request = greedy(10, text="Hello")
        request.response.top_logprobs = 3
        response = SERVER.stub.GenerateUnary(request, timeout=60)
        self.assertEqual(len(response.logprobs), 10)
        for token, entry in zip(response.token_ids, response.logprobs):
            self.assertEqual(entry.token_id, token)
            self.assertEqual(entry.piece, SP.id_to_piece(token))
            self.assertLessEqual(entry.logprob, 0.0)
            self.assertTrue(entry.is_greedy)  # temperature 0
            self.assertEqual(len(entry.top_logprobs), 3)
            tops = [t.logprob for t in entry.top_logprobs]
            self.assertEqual(tops, sorted(tops, reverse=True))
            self.assertEqual(entry.top_logprobs[0].token_id, token)
            self.assertAlmostEqual(entry.top_logprobs[0].logprob, entry.logprob, places=5)

    def test_seeded_sampling_is_reproducible(self):
        def sample(seed):
            request = pb.GenerateRequest(
                text="In a village", sampling=pb.SamplingParams(temperature=1.0, seed=seed),
                stopping=pb.Stopping(max_new_tokens=32, ignore_eos=True),
                response=pb.ResponseOptions(return_token_ids=True))
            return list(SERVER.stub.GenerateUnary(request, timeout=60).token_ids)
        first = sample(1234)
        self.assertEqual(first, sample(1234))
        self.assertNotEqual(first, sample(4321))

    def test_stop_token_ends_generation(self):
        ids = stream_all(greedy(16, text="Once upon a time"))[2]
        stop = ids[5]
        request = greedy(16, text="Once upon a time")
        request.stopping.stop_token_ids.append(stop)
        last = list(SERVER.stub.Generate(request, timeout=60))[-1]
        self.assertEqual(last.finish_reason, pb.FINISH_REASON_STOP_TOKEN)
        self.assertEqual(last.stop_token_id, stop)
        self.assertEqual(last.usage.completion_tokens, ids.index(stop) + 1)

    def test_stop_string_ends_generation(self):
        _, text, _ = stream_all(greedy(40, text="Once upon a time"))
        # A short stop string taken from the middle of the greedy output.
        candidates = [text[i:i + 2] for i in range(4, len(text) - 2)
                      if text[i:i + 2].strip() and "\ufffd" not in text[i:i + 2]]
        if not candidates:
            self.skipTest("the greedy output has no usable stop string")
        stop = candidates[0]
        request = greedy(40, text="Once upon a time")
        request.stopping.stop_strings.append(stop)
        response = SERVER.stub.GenerateUnary(request, timeout=60)
        self.assertEqual(response.finish_reason, pb.FINISH_REASON_STOP_STRING)
        self.assertEqual(response.stop_string, stop)
        self.assertEqual(response.text, text[:text.index(stop)])


class ScoreTest(unittest.TestCase):

    def test_text_score_sums_its_token_logprobs(self):
        text = "the quick brown fox jumps"
        response = SERVER.stub.Score(pb.ScoreRequest(text=text, top_logprobs=2), timeout=60)
        tokens = [SP.bos_id()] + SP.encode(text)
        self.assertEqual(response.num_scored_tokens, len(tokens) - 1)
        self.assertEqual([t.token_id for t in response.token_logprobs], tokens[1:])
        self.assertAlmostEqual(response.sum_logprob,
                               sum(t.logprob for t in response.token_logprobs), places=4)
        self.assertLess(response.sum_logprob, 0)
        self.assertEqual(response.usage.prompt_tokens, len(tokens))
        for t in response.token_logprobs:
            self.assertEqual(len(t.top_logprobs), 2)
            self.assertEqual(t.is_greedy, t.top_logprobs[0].token_id == t.token_id)

    def test_score_matches_generation_logprobs(self):
        prompt = [SP.bos_id()] + SP.encode("Some text")
        generated = SERVER.stub.GenerateUnary(
            greedy(8, token_ids=pb.TokenIds(ids=prompt),
                   response=pb.ResponseOptions(return_token_ids=True, logprobs=True)),
            timeout=60)
        scored = SERVER.stub.Score(
            pb.ScoreRequest(token_ids=pb.TokenIds(ids=prompt + list(generated.token_ids))),
            timeout=60)
        tail = scored.token_logprobs[len(prompt) - 1:]
        self.assertEqual([t.token_id for t in tail], list(generated.token_ids))
        for s, g in zip(tail, generated.logprobs):
            self.assertTrue(s.is_greedy)
            self.assertAlmostEqual(s.logprob, g.logprob, delta=1e-3)

    def test_pairs_follow_the_loglikelihood_contract(self):
        contexts = ["Once upon a time", "The cat", "Hello", "In the morning", "She said",
                    "a b c", "It was", "We", "They went to", "One day"]
        pairs, expect_greedy = [], []
        for context in contexts:
            ctx_ids = [SP.bos_id()] + SP.encode(context)
            first = SERVER.stub.GenerateUnary(
                greedy(1, token_ids=pb.TokenIds(ids=ctx_ids),
                       response=pb.ResponseOptions(return_token_ids=True, top_logprobs=2)),
                timeout=60)
            token = first.token_ids[0]
            runner_up = first.logprobs[0].top_logprobs[1].token_id
            for candidate, is_greedy in ((token, True), (runner_up, False)):
                piece = SP.id_to_piece(candidate)
                # A word piece "▁word" is what the continuation " word" becomes after the context.
                if piece.startswith("\u2581") and piece[1:].isalpha():
                    continuation = " " + piece[1:]
                    if harness_split(context, continuation)[1] == [candidate]:
                        pairs.append(pb.ContinuationPair(context=context,
                                                         continuation=continuation))
                        expect_greedy.append(is_greedy)
        # Longer continuations, and a context whose trailing space moves to the continuation:
        # consistency with scoring the concatenated token ids.
        pairs.append(pb.ContinuationPair(context="Once upon", continuation=" a time there was"))
        expect_greedy.append(None)
        pairs.append(pb.ContinuationPair(context="Once upon ", continuation="a time there was"))
        expect_greedy.append(None)
        self.assertIn(True, expect_greedy, "no context gave a word-piece greedy token")
        response = SERVER.stub.Score(pb.ScoreRequest(pairs=pb.ContinuationPairs(pairs=pairs)),
                                     timeout=60)
        self.assertEqual(len(response.pair_scores), len(pairs))
        for pair, score, greedy_expected in zip(pairs, response.pair_scores, expect_greedy):
            ctx, cont = harness_split(pair.context, pair.continuation)
            self.assertEqual(score.num_context_tokens, len(ctx))
            self.assertEqual(score.num_continuation_tokens, len(cont))
            self.assertEqual([t.token_id for t in score.token_logprobs], cont)
            self.assertAlmostEqual(score.sum_logprob,
                                   sum(t.logprob for t in score.token_logprobs), places=4)
            self.assertEqual(score.is_greedy, all(t.is_greedy for t in score.token_logprobs))
            if greedy_expected is not None:
                self.assertEqual(score.is_greedy, greedy_expected, pair)
            # The same numbers as scoring the concatenation.
            whole = SERVER.stub.Score(pb.ScoreRequest(token_ids=pb.TokenIds(ids=ctx + cont)),
                                      timeout=60)
            self.assertAlmostEqual(
                score.sum_logprob,
                sum(t.logprob for t in whole.token_logprobs[len(ctx) - 1:]), places=3)
            # is_greedy agrees with greedy generation from the context.
            generated = SERVER.stub.GenerateUnary(
                greedy(len(cont), token_ids=pb.TokenIds(ids=ctx)), timeout=60)
            self.assertEqual(score.is_greedy, list(generated.token_ids) == cont)


def harness_split(context, continuation):
    """lm-evaluation-harness's _encode_pair (with bos): (context tokens, continuation tokens)."""
    n_spaces = len(context) - len(context.rstrip())
    if n_spaces > 0:
        continuation = context[-n_spaces:] + continuation
        context = context[:-n_spaces]
    whole = [SP.bos_id()] + SP.encode(context + continuation)
    ctx = [SP.bos_id()] + SP.encode(context)
    return ctx, whole[len(ctx):]


def invalid_generate_cases():
    """(request, substring the INVALID_ARGUMENT message must contain)."""
    G, S, P, St, R = (pb.GenerateRequest, pb.SamplingParams, pb.Penalties, pb.Stopping,
                      pb.ResponseOptions)
    return [
        (G(), "prompt"),
        (G(text=""), "text"),
        (G(token_ids=pb.TokenIds(ids=[])), "token_ids.ids"),
        (G(token_ids=pb.TokenIds(ids=[1, 99999])), "token_ids.ids[1]"),
        (G(token_ids=pb.TokenIds(ids=[1, -1])), "token_ids.ids[1]"),
        (G(token_ids=pb.TokenIds(ids=[5] * 600)), "limits.max_prompt_tokens"),
        (G(text="x", sampling=S(temperature=-0.5)), "sampling.temperature"),
        (G(text="x", sampling=S(temperature=float("nan"))), "sampling.temperature"),
        (G(text="x", sampling=S(top_k=-1)), "sampling.top_k"),
        (G(text="x", sampling=S(top_p=0.0)), "sampling.top_p"),
        (G(text="x", sampling=S(top_p=1.5)), "sampling.top_p"),
        (G(text="x", sampling=S(min_p=1.5)), "sampling.min_p"),
        (G(text="x", penalties=P(repetition_penalty=0.0)), "penalties.repetition_penalty"),
        (G(text="x", penalties=P(presence_penalty=2.5)), "penalties.presence_penalty"),
        (G(text="x", penalties=P(frequency_penalty=-3)), "penalties.frequency_penalty"),
        (G(text="x", stopping=St(max_new_tokens=0)), "stopping.max_new_tokens"),
        (G(text="x", stopping=St(max_new_tokens=100000)), "stopping.max_new_tokens"),
        (G(token_ids=pb.TokenIds(ids=[5] * 500), stopping=St(max_new_tokens=100)),
         "stopping.max_new_tokens"),
        (G(text="x", stopping=St(max_new_tokens=5, min_new_tokens=6)), "stopping.min_new_tokens"),
        (G(text="x", stopping=St(stop_strings=[""])), "stopping.stop_strings[0]"),
        (G(text="x", stopping=St(stop_strings=["a"] * 17)), "stopping.stop_strings"),
        (G(text="x", stopping=St(stop_strings=["a" * 300])), "stopping.stop_strings[0]"),
        (G(text="x", stopping=St(stop_token_ids=[512])), "stopping.stop_token_ids[0]"),
        (G(text="x", response=R(top_logprobs=21)), "response.top_logprobs"),
        (G(text="x", response=R(top_logprobs=-1)), "response.top_logprobs"),
        (G(text="x", request_id="bad id!"), "request_id"),
        (G(text="x", request_id="a" * 129), "request_id"),
        (G(text="x", priority=5000), "priority"),
    ]


class ValidationTest(unittest.TestCase):

    def check_invalid(self, call, request, field):
        with self.assertRaises(grpc.RpcError, msg=str(request)) as error:
            result = call(request, timeout=30)
            if hasattr(result, "__iter__") and not isinstance(result, pb.GenerateResponse):
                list(result)
        self.assertEqual(error.exception.code(), grpc.StatusCode.INVALID_ARGUMENT,
                         error.exception.details())
        self.assertIn(field, error.exception.details())

    def test_generate_rejects_out_of_range_fields_naming_them(self):
        for request, field in invalid_generate_cases():
            with self.subTest(field=field, request=str(request)[:80]):
                self.check_invalid(SERVER.stub.Generate, request, field)
                self.check_invalid(SERVER.stub.GenerateUnary, request, field)

    def test_score_rejects_out_of_range_fields_naming_them(self):
        S = pb.ScoreRequest
        cases = [
            (S(), "input"),
            (S(text=""), "text"),
            (S(token_ids=pb.TokenIds(ids=[1])), "token_ids.ids"),
            (S(token_ids=pb.TokenIds(ids=[1, 700])), "token_ids.ids[1]"),
            (S(pairs=pb.ContinuationPairs()), "pairs.pairs"),
            (S(pairs=pb.ContinuationPairs(pairs=[pb.ContinuationPair(context="a")])),
             "pairs.pairs[0].continuation"),
            (S(pairs=pb.ContinuationPairs(
                pairs=[pb.ContinuationPair(context="a", continuation="b")] * 65)), "pairs.pairs"),
            (S(pairs=pb.ContinuationPairs(pairs=[pb.ContinuationPair(continuation="b")]),
               add_bos=False), "pairs.pairs[0].context"),
            (S(text="hello", top_logprobs=-1), "top_logprobs"),
            (S(text="hello", request_id="x y"), "request_id"),
            (S(token_ids=pb.TokenIds(ids=[5] * 600)), "limits.max_prompt_tokens"),
        ]
        for request, field in cases:
            with self.subTest(field=field):
                self.check_invalid(SERVER.stub.Score, request, field)


class CancellationTest(unittest.TestCase):
    """Cancelled and timed-out requests stop in the engine. The test model is so fast that a lone
    request could finish before the cancellation arrives, so each case first fills the batch with
    long background streams: every step then costs BACKGROUND times more."""

    BACKGROUND = 12

    def wait_for(self, predicate, timeout=10):
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if predicate():
                return True
            time.sleep(0.05)
        return False

    def finished(self, reason):
        return SERVER.metric("spqr_request_finished_total", {"finished_reason": reason})

    def start_background(self):
        calls = [SERVER.stub.Generate(greedy(LONG, text=f"background {i}"), timeout=120)
                 for i in range(self.BACKGROUND)]
        for call in calls:
            next(call)  # running
        return calls

    def assert_generation_settles(self, tokens_before, limit):
        settled = SERVER.metric("spqr_generation_tokens_total")
        time.sleep(0.5)
        self.assertEqual(SERVER.metric("spqr_generation_tokens_total"), settled,
                         "tokens are still being generated after every request ended")
        self.assertLess(settled - tokens_before, limit)
        self.assertTrue(self.wait_for(lambda: SERVER.metric("spqr_num_requests_running") == 0))

    def test_cancel_mid_stream_stops_generation(self):
        cancelled_before = self.finished("cancelled")
        rpc_cancelled_before = SERVER.metric("spqr_requests_total",
                                             {"method": "Generate", "code": "CANCELLED"})
        tokens_before = SERVER.metric("spqr_generation_tokens_total")
        calls = self.start_background()
        call = SERVER.stub.Generate(greedy(LONG, text="Tell me a long story"), timeout=120)
        first = next(call)
        self.assertEqual(first.finish_reason, pb.FINISH_REASON_UNSPECIFIED)
        for c in [call] + calls:
            c.cancel()
        expected = self.BACKGROUND + 1
        self.assertTrue(self.wait_for(lambda: self.finished("cancelled") - cancelled_before
                                      >= expected),
                        "the engine did not finish every request as cancelled")
        self.assert_generation_settles(tokens_before, expected * LONG)
        self.assertTrue(self.wait_for(lambda: SERVER.metric(
            "spqr_requests_total", {"method": "Generate", "code": "CANCELLED"})
            - rpc_cancelled_before >= expected))

    def test_deadline_stops_generation(self):
        before = self.finished("deadline_exceeded") + self.finished("cancelled")
        tokens_before = SERVER.metric("spqr_generation_tokens_total")
        calls = self.start_background()
        try:
            with self.assertRaises(grpc.RpcError) as error:
                SERVER.stub.GenerateUnary(greedy(LONG, text="Tell me a long story"),
                                          timeout=0.3)
            self.assertEqual(error.exception.code(), grpc.StatusCode.DEADLINE_EXCEEDED)
        finally:
            for c in calls:
                c.cancel()
        # The timed-out request ends in the engine (as deadline_exceeded, or cancelled when the
        # gRPC cancellation arrives first), like the background ones.
        self.assertTrue(self.wait_for(lambda: self.finished("deadline_exceeded") +
                                      self.finished("cancelled") - before
                                      >= self.BACKGROUND + 1))
        self.assert_generation_settles(tokens_before, (self.BACKGROUND + 1) * LONG)


class AbortTest(unittest.TestCase):
    """Abort cancels a live request by its id, from another call (background streams slow every
    step down, as in CancellationTest, so the aborted request cannot finish first)."""

    BACKGROUND = CancellationTest.BACKGROUND
    wait_for = CancellationTest.wait_for
    start_background = CancellationTest.start_background

    def test_abort_by_server_assigned_id_ends_the_stream_cancelled(self):
        aborts_before = SERVER.metric("spqr_requests_total", {"method": "Abort", "code": "OK"})
        calls = self.start_background()
        try:
            call = SERVER.stub.Generate(greedy(LONG, text="Tell me a long story"), timeout=120)
            # The server-assigned id arrives before any token, in the initial metadata.
            request_id = dict(call.initial_metadata())["spqr-request-id"]
            # 128 random bits: unguessable, so only this caller can Abort it without API keys.
            self.assertRegex(request_id, r"^[0-9a-f]{32}$")
            first = next(call)
            self.assertEqual(first.request_id, request_id)
            response = SERVER.stub.Abort(pb.AbortRequest(request_id=request_id), timeout=10)
            self.assertTrue(response.found)
            rest = list(call)  # ends normally (status OK)
            last = rest[-1] if rest else first
            self.assertEqual(last.finish_reason, pb.FINISH_REASON_CANCELLED)
            self.assertLess(last.usage.completion_tokens, LONG)
            self.assertEqual(call.code(), grpc.StatusCode.OK)
            # Finished: a second Abort finds nothing.
            self.assertFalse(SERVER.stub.Abort(pb.AbortRequest(request_id=request_id),
                                               timeout=10).found)
        finally:
            for c in calls:
                c.cancel()
        self.assertTrue(self.wait_for(lambda: SERVER.metric(
            "spqr_requests_total", {"method": "Abort", "code": "OK"}) - aborts_before >= 2))

    def test_abort_unary_by_client_id_and_unknown_ids(self):
        calls = self.start_background()
        try:
            future = SERVER.stub.GenerateUnary.future(
                greedy(LONG, text="Tell me a long story", request_id="abort-me.1"), timeout=120)
            # Python's unary calls see the initial metadata only with the response, so the
            # client-chosen id is aborted as soon as the server knows it.
            self.assertTrue(self.wait_for(lambda: SERVER.stub.Abort(
                pb.AbortRequest(request_id="abort-me.1"), timeout=10).found))
            response = future.result()
            self.assertEqual(response.request_id, "abort-me.1")
            self.assertEqual(response.finish_reason, pb.FINISH_REASON_CANCELLED)
            self.assertLess(response.usage.completion_tokens, LONG)
            self.assertEqual(len(response.token_ids), response.usage.completion_tokens)
        finally:
            for c in calls:
                c.cancel()
        self.assertFalse(SERVER.stub.Abort(pb.AbortRequest(request_id="no-such-id"),
                                           timeout=10).found)
        with self.assertRaises(grpc.RpcError) as error:
            SERVER.stub.Abort(pb.AbortRequest(), timeout=10)
        self.assertEqual(error.exception.code(), grpc.StatusCode.INVALID_ARGUMENT)
        self.assertIn("request_id", error.exception.details())


class MetricsTest(unittest.TestCase):

    def test_metrics_names_help_and_counters(self):
        # Traffic of our own, so the test does not depend on the order tests run in.
        SERVER.stub.GenerateUnary(greedy(5, text="metrics"), timeout=60)
        list(SERVER.stub.Generate(greedy(5, text="metrics"), timeout=60))
        text = SERVER.metrics_text()
        with open(os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..", "docs",
                               "metrics.md")) as f:
            documented = re.findall(r"^\| `([a-z0-9_:]+)` \| (?:counter|gauge|histogram) \|",
                                    f.read(), re.M)
        self.assertGreater(len(documented), 15)
        for name in documented:
            self.assertIn(f"# HELP {name} ", text, name)
            self.assertIn(f"# TYPE {name} ", text, name)
        self.assertGreaterEqual(SERVER.metric("spqr_requests_total",
                                              {"method": "GenerateUnary", "code": "OK"}), 1)
        self.assertGreaterEqual(SERVER.metric("spqr_requests_total",
                                              {"method": "Generate", "code": "OK"}), 1)
        self.assertGreaterEqual(SERVER.metric("spqr_request_finished_total",
                                              {"finished_reason": "length"}), 2)
        self.assertGreaterEqual(SERVER.metric("spqr_generation_tokens_total"), 10)
        self.assertGreaterEqual(SERVER.metric("spqr_prompt_tokens_total"), 2)
        self.assertGreaterEqual(SERVER.metric("spqr_time_to_first_token_seconds_count"), 2)
        self.assertGreaterEqual(SERVER.metric("spqr_inter_token_latency_seconds_count"), 8)
        self.assertGreaterEqual(SERVER.metric("spqr_e2e_request_latency_seconds_count"), 2)
        self.assertEqual(SERVER.metric("spqr_model_ready"), 1)
        # Each request prefilled its prompt and then decoded 4 tokens, alone or beside others. The
        # step of a request's last token may report just after its response (>= 9, not 10). The
        # observer runs after the step counter grows: read the histograms first.
        step_kinds = [{"kind": k} for k in ("prefill", "decode", "mixed")]
        observed = sum(SERVER.metric("spqr_engine_step_duration_seconds_count", k)
                       for k in step_kinds)
        step_tokens = sum(SERVER.metric("spqr_engine_step_tokens_sum", k) for k in step_kinds)
        decode_steps = (SERVER.metric("spqr_engine_step_tokens_count", {"kind": "decode"}) +
                        SERVER.metric("spqr_engine_step_tokens_count", {"kind": "mixed"}))
        self.assertGreaterEqual(observed, 9)
        self.assertLessEqual(observed, SERVER.metric("spqr_engine_steps_total"))
        self.assertGreaterEqual(decode_steps, 4)
        self.assertGreaterEqual(step_tokens, observed)
        self.assertGreater(SERVER.metric("spqr_kv_cache_blocks", {"state": "free"}), 0)
        self.assertEqual(SERVER.metric("spqr_kv_cache_capacity_blocks"),
                         SERVER.metric("spqr_kv_cache_blocks", {"state": "free"}) +
                         SERVER.metric("spqr_kv_cache_blocks", {"state": "used"}))
        self.assertEqual(SERVER.metric("spqr_kv_cache_capacity_blocks"),
                         SERVER.stub.GetModelInfo(pb.GetModelInfoRequest(),
                                                  timeout=10).limits.kv_blocks_total)
        # The server's own resident memory: the model plus the 16 MiB KV pool at least.
        with open(f"/proc/{SERVER.proc.pid}/statm") as f:
            rss_pages = int(f.read().split()[1])
        rss = SERVER.metric("spqr_process_resident_memory_bytes")
        self.assertGreater(rss, 16 << 20)
        self.assertLess(abs(rss - rss_pages * os.sysconf("SC_PAGE_SIZE")), 64 << 20)
        self.assertIn("vllm:num_requests_waiting", text)


class ClientBinaryTest(unittest.TestCase):

    def run_client(self, *args):
        return subprocess.run([ARGS.client, "--address", SERVER.address, "--timeout", "60",
                               *args], capture_output=True, text=True, timeout=90)

    def test_generate_info_score_health(self):
        result = self.run_client("generate", "Once upon a time", "--max-new-tokens", "8",
                                 "--temperature", "0")
        self.assertEqual(result.returncode, 0, result.stderr)
        expected = SERVER.stub.GenerateUnary(pb.GenerateRequest(
            text="Once upon a time", sampling=pb.SamplingParams(temperature=0),
            stopping=pb.Stopping(max_new_tokens=8)), timeout=60)
        self.assertEqual(result.stdout, expected.text + "\n")
        self.assertIn("prompt +", result.stderr)

        result = self.run_client("info")
        self.assertEqual(result.returncode, 0, result.stderr)
        self.assertEqual(json.loads(result.stdout)["architecture"]["vocab_size"],
                         str(config_json()["vocab_size"]))  # int64 is a JSON string

        result = self.run_client("score", "the quick brown fox")
        self.assertEqual(result.returncode, 0, result.stderr)
        self.assertLess(json.loads(result.stdout)["sum_logprob"], 0)

        result = self.run_client("score", "--context", "The cat", "--continuation", " sat")
        self.assertEqual(result.returncode, 0, result.stderr)
        self.assertEqual(len(json.loads(result.stdout)["pair_scores"]), 1)

        result = self.run_client("health")
        self.assertEqual((result.returncode, result.stdout.strip()), (0, "SERVING"))

        result = self.run_client("abort", "no-such-request")
        self.assertEqual((result.returncode, result.stdout.strip()), (1, "not found"))

        result = self.run_client("generate", "x", "--top-p", "2")
        self.assertEqual(result.returncode, 1)
        self.assertIn("sampling.top_p", result.stderr)


if __name__ == "__main__":
    ARGS, rest = harness.parse_args()
    harness.ARGS = ARGS
    globals().update(harness.import_stubs(ARGS.stubs))
    import sentencepiece  # noqa: E402
    from google.protobuf import descriptor_pb2  # noqa: E402
    unittest.main(argv=[sys.argv[0], *rest], verbosity=2)
