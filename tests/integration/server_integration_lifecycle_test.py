#!/usr/bin/python3
"""Integration test of spqr-server's life cycle, each case with a server of its own: start-up
errors (exit codes naming the bad model or flag, --help), a full queue answering
RESOURCE_EXHAUSTED with a retry hint, and SIGTERM draining. Uses the harness in server_harness.py;
the API tests on one shared server are in server_integration_test.py.

Run through ctest (label "integration"), or by hand with the same flags as that file:
  /usr/bin/python3 tests/integration/server_integration_lifecycle_test.py \
      --server build/server/spqr-server --client build/server/spqr-client \
      --model tests/data/test-model --stubs build/python_stubs
Every wait is bounded; every server started here is killed at the end.
"""
import signal
import subprocess
import sys
import time
import unittest

import server_harness as harness
from server_harness import LONG, ServerProcess, greedy

ARGS = None
grpc = pb = health_pb2 = None  # the stubs' modules, from harness.import_stubs in __main__


class StartupErrorTest(unittest.TestCase):

    def run_server(self, *flags):
        return subprocess.run([ARGS.server, "--listen", "127.0.0.1:0", "--metrics_port", "0",
                               *flags], capture_output=True, text=True, timeout=60)

    def test_missing_model_exits_1_naming_it(self):
        result = self.run_server("--model", "/nonexistent/model-dir")
        self.assertEqual(result.returncode, 1, result.stderr)
        self.assertIn("/nonexistent/model-dir", result.stderr)

    def test_bad_flags_exit_2_naming_them(self):
        result = self.run_server("--model", ARGS.model, "--engine.kv_block_size=zero")
        self.assertEqual(result.returncode, 2)
        self.assertIn("engine.kv_block_size", result.stderr)
        result = self.run_server("--modle", ARGS.model)
        self.assertEqual(result.returncode, 2)
        self.assertIn("--modle", result.stderr)

    def test_help_lists_the_flags(self):
        result = subprocess.run([ARGS.server, "--help"], capture_output=True, text=True,
                                timeout=30)
        self.assertEqual(result.returncode, 0)
        for flag in ("--model.dir", "--model", "--listen", "--metrics_port",
                     "--engine.kv_cache_bytes", "--server.drain_timeout_seconds"):
            self.assertIn(flag, result.stdout)


class OverloadTest(unittest.TestCase):

    def test_full_queue_answers_resource_exhausted(self):
        server = ServerProcess(["--engine.max_running_requests", "1",
                                "--engine.max_queued_requests", "1"])
        try:
            server.wait_serving()
            running = server.stub.Generate(greedy(LONG, text="first"), timeout=120)
            next(running)  # scheduled: the only running slot is taken
            waiting = server.stub.Generate(greedy(4, text="second"), timeout=120)
            # The second request waits (queue: 1 of 1); a third one is refused.
            deadline = time.monotonic() + 10
            while server.metric("spqr_num_requests_waiting") < 1:
                self.assertLess(time.monotonic(), deadline, "the second request never queued")
                time.sleep(0.01)
            # More long requests at once: one running + one waiting is all the engine holds, so
            # most are refused even if `running` finished meanwhile and a slot opened.
            extra = [server.stub.GenerateUnary.future(greedy(LONG, text=f"extra {i}"),
                                                      timeout=120) for i in range(8)]
            codes = []
            for future in extra:
                try:
                    future.result()
                    codes.append(grpc.StatusCode.OK)
                except grpc.RpcError as error:
                    codes.append(error.code())
                    if error.code() == grpc.StatusCode.RESOURCE_EXHAUSTED:
                        self.assertIn("queue", error.details())
                        self.assertIn("engine.max_queued_requests = 1", error.details())
                        # The retry hint: time until the queue has room, in [10 ms, 60 s].
                        trailing = dict(error.trailing_metadata())
                        self.assertIn("grpc-retry-pushback-ms", trailing)
                        pushback = int(trailing["grpc-retry-pushback-ms"])
                        self.assertGreaterEqual(pushback, 10)
                        self.assertLessEqual(pushback, 60000)
                        self.assertIn(f"retry in about {pushback} ms", error.details())
            self.assertGreaterEqual(codes.count(grpc.StatusCode.RESOURCE_EXHAUSTED), 6, codes)
            self.assertGreaterEqual(server.metric("spqr_requests_total", {
                "method": "GenerateUnary", "code": "RESOURCE_EXHAUSTED"}), 6)
            running.cancel()
            self.assertEqual(list(waiting)[-1].finish_reason, pb.FINISH_REASON_LENGTH)
        finally:
            server.kill()


class DrainTest(unittest.TestCase):
    """SIGTERM: readiness off, new calls refused, in-flight calls finish (or are cancelled at the
    drain timeout), exit code 0. Each case starts its own server."""

    def start_long_streams(self, server, count):
        calls = [server.stub.Generate(greedy(LONG, text=f"story {i}"), timeout=120)
                 for i in range(count)]
        firsts = [next(call) for call in calls]  # all are running
        return calls, firsts

    def test_sigterm_drains_in_flight_requests(self):
        server = ServerProcess(["--drain_timeout", "60"])
        try:
            server.wait_serving()
            calls, _ = self.start_long_streams(server, 6)
            server.proc.send_signal(signal.SIGTERM)
            deadline = time.monotonic() + 10
            while server.health_status() != health_pb2.HealthCheckResponse.NOT_SERVING:
                self.assertLess(time.monotonic(), deadline, "health stayed SERVING")
                time.sleep(0.01)
            with self.assertRaises(grpc.RpcError) as error:
                server.stub.GenerateUnary(greedy(2, text="late"), timeout=10)
            self.assertEqual(error.exception.code(), grpc.StatusCode.UNAVAILABLE)
            for call in calls:  # in-flight requests run to completion
                self.assertEqual(list(call)[-1].finish_reason, pb.FINISH_REASON_LENGTH)
            self.assertEqual(server.stop(timeout=30), 0)
        finally:
            server.kill()

    def test_drain_timeout_cancels_the_rest(self):
        server = ServerProcess(["--drain_timeout", "0.05"])
        try:
            server.wait_serving()
            calls, _ = self.start_long_streams(server, 6)
            self.assertEqual(server.stop(timeout=30), 0)
            codes = []
            for call in calls:
                try:
                    list(call)
                    codes.append(grpc.StatusCode.OK)
                except grpc.RpcError as error:
                    codes.append(error.code())
            self.assertIn(grpc.StatusCode.UNAVAILABLE, codes)
        finally:
            server.kill()


if __name__ == "__main__":
    ARGS, rest = harness.parse_args()
    harness.ARGS = ARGS
    globals().update(harness.import_stubs(ARGS.stubs))
    unittest.main(argv=[sys.argv[0], *rest], verbosity=2)
