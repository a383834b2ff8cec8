#!/usr/bin/python3
"""Integration test of spqr-server against hostile input (issue 14): unparsable requests (on
spqr.v1, grpc.health.v1 and reflection) get INVALID_ARGUMENT naming the problem and are counted; a huge prompt is refused on its byte length
before any tokenizing and does not delay a small concurrent request; client strings reach the log
escaped and truncated; server-assigned request ids are random; start-up errors say what is wrong.

Run through ctest (label "integration"), or by hand with the flags of server_harness.py:
  /usr/bin/python3 tests/integration/server_hardening_test.py \\
      --server build/server/spqr-server --client build/server/spqr-client \\
      --model tests/data/test-model --stubs build/python_stubs
Every wait is bounded; every server started here is killed at the end.
"""
import os
import re
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import unittest

import server_harness as harness
from server_harness import ServerProcess, greedy

ARGS = None
grpc = pb = None  # the stubs' modules, from harness.import_stubs in __main__
SERVER = None

HUGE = 10 << 20  # bytes of the "huge" prompt: over the default 4 MiB message size
# The bound (stated here, checked below) on how long a huge request may take to be refused and on
# how much it may delay a small concurrent request (over that request's median alone). Both are
# seconds on a loaded 2-core CI machine; tokenizing the huge prompt took tens of seconds before.
REFUSE_WITHIN_S = 2.0
EXTRA_DELAY_S = 1.0


def raw_unary(channel, method):
    return channel.unary_unary(f"/spqr.v1.SpqrService/{method}",
                               request_serializer=lambda raw: raw,
                               response_deserializer=lambda raw: raw)


def raw_stream(channel, method):
    return channel.unary_stream(f"/spqr.v1.SpqrService/{method}",
                                request_serializer=lambda raw: raw,
                                response_deserializer=lambda raw: raw)


def with_bad_utf8(message, placeholder):
    """`message` serialized, with the bytes of string `placeholder` (ASCII) replaced by invalid
    UTF-8 of the same length: the wire format stays well-formed, only the string is not UTF-8."""
    raw = message.SerializeToString()
    marker = placeholder.encode()
    assert raw.count(marker) == 1
    return raw.replace(marker, b"\xff" + b"\xfe" * (len(marker) - 1))


def call_code_and_details(callable_, raw, timeout=10):
    try:
        result = callable_(raw, timeout=timeout)
        if not isinstance(result, bytes):
            list(result)  # a stream: read to the end
        return grpc.StatusCode.OK, ""
    except grpc.RpcError as error:
        return error.code(), error.details()


class MalformedRequestTest(unittest.TestCase):
    """Raw bytes that are not a valid request message, on every method."""

    def test_invalid_utf8_is_invalid_argument_naming_the_field_and_counted(self):
        channel = SERVER.channel
        cases = [
            ("Generate", raw_stream(channel, "Generate"),
             with_bad_utf8(pb.GenerateRequest(text="PLACEHOLDER"), "PLACEHOLDER"), "text"),
            ("GenerateUnary", raw_unary(channel, "GenerateUnary"),
             with_bad_utf8(pb.GenerateRequest(text="hello", stopping=pb.Stopping(
                 stop_strings=["fine", "PLACEHOLDER"])), "PLACEHOLDER"),
             "stopping.stop_strings[1]"),
            ("GenerateUnary", raw_unary(channel, "GenerateUnary"),
             with_bad_utf8(pb.GenerateRequest(text="hello", request_id="PLACEHOLDER"),
                           "PLACEHOLDER"), "request_id"),
            ("Score", raw_unary(channel, "Score"),
             with_bad_utf8(pb.ScoreRequest(pairs=pb.ContinuationPairs(pairs=[
                 pb.ContinuationPair(context="a", continuation=" b"),
                 pb.ContinuationPair(context="PLACEHOLDER", continuation=" c")])), "PLACEHOLDER"),
             "pairs.pairs[1].context"),
            ("Abort", raw_unary(channel, "Abort"),
             with_bad_utf8(pb.AbortRequest(request_id="PLACEHOLDER"), "PLACEHOLDER"),
             "request_id"),
        ]
        for method, callable_, raw, field in cases:
            with self.subTest(method=method, field=field):
                before = SERVER.metric("spqr_requests_total",
                                       {"method": method, "code": "INVALID_ARGUMENT"})
                code, details = call_code_and_details(callable_, raw)
                self.assertEqual(code, grpc.StatusCode.INVALID_ARGUMENT, details)
                self.assertIn(f"{field}: invalid UTF-8", details)
                self.assertNotIn("\ufffd", details)  # the client's bytes are not quoted
                self.assertEqual(SERVER.metric("spqr_requests_total",
                                               {"method": method, "code": "INVALID_ARGUMENT"}),
                                 before + 1)

    def test_truncated_messages_are_invalid_argument_saying_so(self):
        channel = SERVER.channel
        full = pb.GenerateRequest(text="a prompt of some length",
                                  stopping=pb.Stopping(max_new_tokens=4)).SerializeToString()
        score = pb.ScoreRequest(token_ids=pb.TokenIds(ids=[1, 300, 70000])).SerializeToString()
        cases = [
            ("Generate", raw_stream(channel, "Generate"), full[:10], "text"),
            ("GenerateUnary", raw_unary(channel, "GenerateUnary"), full[:-1], "stopping"),
            # The last token id's varint cut in the middle.
            ("Score", raw_unary(channel, "Score"), score[:-1], "token_ids"),
            ("GetModelInfo", raw_unary(channel, "GetModelInfo"), b"\x0a\x05ab", ""),
        ]
        for method, callable_, raw, field in cases:
            with self.subTest(method=method):
                before = SERVER.metric("spqr_requests_total",
                                       {"method": method, "code": "INVALID_ARGUMENT"})
                code, details = call_code_and_details(callable_, raw)
                self.assertEqual(code, grpc.StatusCode.INVALID_ARGUMENT, details)
                self.assertIn("truncated", details)
                self.assertIn(field, details)
                self.assertEqual(SERVER.metric("spqr_requests_total",
                                               {"method": method, "code": "INVALID_ARGUMENT"}),
                                 before + 1)

    def test_valid_raw_bytes_are_served_as_before(self):
        raw = greedy(3, text="hello").SerializeToString()
        response = pb.GenerateResponse.FromString(
            raw_unary(SERVER.channel, "GenerateUnary")(raw, timeout=30))
        self.assertEqual(response.usage.completion_tokens, 3)
        self.assertEqual(response.finish_reason, pb.FINISH_REASON_LENGTH)


def raw_method(channel, kind, path):
    """A call of `kind` ("unary_unary", ...) on `path` that sends and returns raw bytes: no stub,
    no generated message class, so nothing on the client side can refuse or repair the bytes."""
    return getattr(channel, kind)(path, request_serializer=lambda raw: raw,
                                  response_deserializer=lambda raw: raw)


def length_delimited(field, payload):
    """One length-delimited protobuf field (wire type 2), encoded by hand."""
    assert len(payload) < 128
    return bytes([field << 3 | 2, len(payload)]) + payload


HEALTH_CHECK = "/grpc.health.v1.Health/Check"
HEALTH_WATCH = "/grpc.health.v1.Health/Watch"
REFLECTION = "/grpc.reflection.v1alpha.ServerReflection/ServerReflectionInfo"
# Bytes that are not a grpc.health.v1.HealthCheckRequest / ServerReflectionRequest, with what the
# refusal must say. Field 1 is `service` / `host` (a string) in both messages.
GARBAGE = [
    ("truncated", b"\x0a\x05ab", "truncated"),
    ("invalid UTF-8", length_delimited(1, b"\xff\xfe"), "invalid UTF-8"),
    ("bad wire type", b"\x0f", "wire type 7"),
]


class MalformedHealthAndReflectionTest(unittest.TestCase):
    """The same for grpc.health.v1.Health and the reflection stream, from a raw-bytes client:
    INVALID_ARGUMENT naming the problem (not gRPC's bare UNIMPLEMENTED), counted in
    spqr_malformed_requests_total{method}; well-formed bytes keep working."""

    def malformed(self, method):
        return SERVER.metric("spqr_malformed_requests_total", {"method": method})

    def expect_refused(self, method, call, message_type, expected):
        before = self.malformed(method)
        code, details = call()
        self.assertEqual(code, grpc.StatusCode.INVALID_ARGUMENT, details)
        self.assertIn(f"not a valid {message_type}", details)
        self.assertIn(expected, details)
        self.assertEqual(self.malformed(method), before + 1)

    def test_health_check_and_watch_refuse_garbage(self):
        check = raw_method(SERVER.channel, "unary_unary", HEALTH_CHECK)
        watch = raw_method(SERVER.channel, "unary_stream", HEALTH_WATCH)
        for name, raw, expected in GARBAGE:
            for method, callable_ in (("Health.Check", check), ("Health.Watch", watch)):
                with self.subTest(method=method, garbage=name):
                    self.expect_refused(method, lambda: call_code_and_details(callable_, raw),
                                        "grpc.health.v1.HealthCheckRequest", expected)

    def test_reflection_refuses_garbage_and_says_which_message(self):
        reflection = raw_method(SERVER.channel, "stream_stream", REFLECTION)
        list_services = length_delimited(7, b"")
        for name, raw, expected in GARBAGE:
            with self.subTest(garbage=name):
                answers = []

                def call():
                    try:
                        for answer in reflection(iter([list_services, raw]), timeout=10):
                            answers.append(answer)
                        return grpc.StatusCode.OK, ""
                    except grpc.RpcError as error:
                        return error.code(), error.details()

                self.expect_refused("ServerReflectionInfo", call,
                                    "grpc.reflection.v1alpha.ServerReflectionRequest", expected)
                # The valid first message was answered; the refusal names the second.
                self.assertEqual(len(answers), 1)
                self.assertIn(b"spqr.v1.SpqrService", answers[0])

    def test_well_formed_raw_requests_still_work(self):
        # grpc_health_probe's request: an empty HealthCheckRequest (the whole server).
        response = raw_method(SERVER.channel, "unary_unary", HEALTH_CHECK)(b"", timeout=10)
        self.assertEqual(response, b"\x08\x01")  # status: SERVING
        response = raw_method(SERVER.channel, "unary_unary", HEALTH_CHECK)(
            length_delimited(1, b"spqr.v1.SpqrService"), timeout=10)
        self.assertEqual(response, b"\x08\x01")
        watch = raw_method(SERVER.channel, "unary_stream", HEALTH_WATCH)(b"", timeout=10)
        self.assertEqual(next(watch), b"\x08\x01")
        watch.cancel()
        answers = list(raw_method(SERVER.channel, "stream_stream", REFLECTION)(
            iter([length_delimited(7, b"")]), timeout=10))
        self.assertEqual(len(answers), 1)
        for service in (b"spqr.v1.SpqrService", b"grpc.health.v1.Health",
                        b"grpc.reflection.v1alpha.ServerReflection"):
            self.assertIn(service, answers[0])
        # The spqr.v1 refusals are counted in the same metric (and in spqr_requests_total).
        before = self.malformed("GetModelInfo")
        code, _ = call_code_and_details(raw_unary(SERVER.channel, "GetModelInfo"), b"\x0a\x05ab")
        self.assertEqual(code, grpc.StatusCode.INVALID_ARGUMENT)
        self.assertEqual(self.malformed("GetModelInfo"), before + 1)


class RequestIdTest(unittest.TestCase):

    def test_server_assigned_ids_are_random_and_not_sequential(self):
        ids = [SERVER.stub.GenerateUnary(greedy(1, text="hi"), timeout=30).request_id
               for _ in range(8)]
        for request_id in ids:
            self.assertRegex(request_id, r"^[0-9a-f]{32}$")
        self.assertEqual(len(set(ids)), len(ids))
        # Guessing from one id to the next is hopeless: the ids share no long common prefix.
        for a, b in zip(ids, ids[1:]):
            self.assertLess(len(os.path.commonprefix([a, b])), 8)


class LogSafetyTest(unittest.TestCase):
    """Client strings in the request log: escaped (no forged lines) and truncated."""

    def test_request_ids_cannot_forge_or_flood_log_lines(self):
        forged = "x\n2030-01-01T00:00:00.000Z INFO forged line"
        huge = "y" * 100_000
        for request_id in (forged, huge):
            with self.assertRaises(grpc.RpcError) as error:
                SERVER.stub.GenerateUnary(greedy(1, text="hi", request_id=request_id), timeout=30)
            self.assertEqual(error.exception.code(), grpc.StatusCode.INVALID_ARGUMENT)
        # The refusals were logged (the log line is written before the status goes out).
        time.sleep(0.3)
        lines = list(SERVER.stderr_lines)
        self.assertFalse([line for line in lines if line.startswith("2030-01-01")], lines[-5:])
        escaped = [line for line in lines if "x\\n2030-01-01T00:00:00.000Z INFO forged" in line]
        self.assertEqual(len(escaped), 1, lines[-5:])
        flood = [line for line in lines if "yyyy" in line]
        self.assertEqual(len(flood), 1, lines[-5:])
        self.assertIn("...(100000 bytes)", flood[0])
        self.assertLess(len(flood[0]), 1000)


class RequestCostTest(unittest.TestCase):
    """A huge prompt is refused on its byte length before tokenizing, quickly, without delaying a
    small concurrent request (on a server whose message size lets the huge request through)."""

    @classmethod
    def setUpClass(cls):
        cls.server = ServerProcess(["--server.max_message_bytes", str(32 << 20)])
        cls.server.wait_serving()
        cls.info = cls.server.stub.GetModelInfo(pb.GetModelInfoRequest(), timeout=10)

    @classmethod
    def tearDownClass(cls):
        cls.server.kill()

    def small_latency(self):
        start = time.monotonic()
        response = self.server.stub.GenerateUnary(greedy(4, text="The kernel"), timeout=60)
        self.assertEqual(response.usage.completion_tokens, 4)
        return time.monotonic() - start

    def test_model_info_states_the_byte_bound(self):
        limits = self.info.limits
        self.assertGreater(limits.max_prompt_bytes, 0)
        self.assertEqual(limits.max_prompt_bytes % limits.max_prompt_tokens, 0)

    def test_huge_prompts_are_refused_quickly_without_delaying_others(self):
        baseline = statistics.median(self.small_latency() for _ in range(5))
        huge = "word " * (HUGE // 5)
        bound = self.info.limits.max_prompt_bytes
        requests = [
            ("Generate", lambda: list(self.server.stub.Generate(
                pb.GenerateRequest(text=huge), timeout=60)), "text"),
            ("Score", lambda: self.server.stub.Score(
                pb.ScoreRequest(text=huge), timeout=60), "text"),
            ("Score pairs", lambda: self.server.stub.Score(pb.ScoreRequest(pairs=pb.ContinuationPairs(
                pairs=[pb.ContinuationPair(context=huge, continuation=" x")])), timeout=60),
             "pairs.pairs[0]"),
        ]
        results = {}

        def run(name, call):
            start = time.monotonic()
            try:
                call()
                results[name] = (grpc.StatusCode.OK, "", time.monotonic() - start)
            except grpc.RpcError as error:
                results[name] = (error.code(), error.details(), time.monotonic() - start)

        threads = [threading.Thread(target=run, args=(name, call), daemon=True)
                   for name, call, _ in requests]
        for thread in threads:
            thread.start()
        during = [self.small_latency() for _ in range(3)]
        for thread in threads:
            thread.join(timeout=120)
        for name, _, field in requests:
            with self.subTest(request=name):
                code, details, seconds = results[name]
                self.assertEqual(code, grpc.StatusCode.INVALID_ARGUMENT, details)
                self.assertIn(f"{field}", details)
                self.assertIn(f"at most {bound} are allowed", details)
                self.assertIn("limits.max_prompt_tokens", details)
                self.assertLess(seconds, REFUSE_WITHIN_S, details)
        print(f"\nsmall GenerateUnary: median {baseline:.3f} s alone, max {max(during):.3f} s "
              f"with 3 huge ({HUGE >> 20} MiB) requests; refusals took "
              + ", ".join(f"{results[n][2]:.3f} s" for n, _, _ in requests), file=sys.stderr)
        self.assertLess(max(during), baseline + EXTRA_DELAY_S)

    def test_default_message_size_refuses_the_huge_prompt_before_reading_it(self):
        start = time.monotonic()
        with self.assertRaises(grpc.RpcError) as error:
            SERVER.stub.GenerateUnary(pb.GenerateRequest(text="x" * HUGE), timeout=60)
        self.assertEqual(error.exception.code(), grpc.StatusCode.RESOURCE_EXHAUSTED)
        self.assertLess(time.monotonic() - start, REFUSE_WITHIN_S)


class StartupErrorTest(unittest.TestCase):
    """Start-up errors name the key and the problem (exit code 1)."""

    def start_up_error(self, *flags, code=1):
        result = subprocess.run([ARGS.server, "--metrics_port", "0", *flags],
                                capture_output=True, text=True, timeout=60)
        self.assertEqual(result.returncode, code, result.stderr)
        return result.stderr

    def test_listen_port_in_use(self):
        with socket.socket() as taken:
            taken.bind(("127.0.0.1", 0))
            taken.listen()
            port = taken.getsockname()[1]
            stderr = self.start_up_error("--model", ARGS.model, "--listen", f"127.0.0.1:{port}")
        self.assertIn(f"cannot listen on 127.0.0.1:{port} (server.listen)", stderr)
        self.assertIn("already in use", stderr)

    def test_listen_port_out_of_range(self):
        # A configuration error (exit code 2): gRPC would take the port modulo 65536.
        stderr = self.start_up_error("--model", ARGS.model, "--listen", "127.0.0.1:70000", code=2)
        self.assertIn("server.listen must be host:port with a port in [0, 65535]", stderr)
        stderr = self.start_up_error("--model", ARGS.model, "--listen", "127.0.0.1:http", code=2)
        self.assertIn("server.listen", stderr)

    def test_model_dir_that_is_a_file_or_missing(self):
        with tempfile.NamedTemporaryFile() as file:
            stderr = self.start_up_error("--model", file.name, "--listen", "127.0.0.1:0")
            self.assertIn(f"model.dir {file.name}: not a directory", stderr)
        stderr = self.start_up_error("--model", "/nonexistent/model", "--listen", "127.0.0.1:0")
        self.assertIn("model.dir /nonexistent/model: No such file or directory", stderr)


def setUpModule():
    global SERVER
    SERVER = ServerProcess()
    SERVER.wait_serving()
    harness.SERVER = SERVER


def tearDownModule():
    SERVER.kill()


if __name__ == "__main__":
    ARGS, rest = harness.parse_args()
    harness.ARGS = ARGS
    globals().update(harness.import_stubs(ARGS.stubs))
    unittest.main(argv=[sys.argv[0], *rest], verbosity=2)
