#!/usr/bin/python3
"""Serving-runtime integration test (issue 4): the real spqr-server over real gRPC on 127.0.0.1.

Checks what the runtime promises a client: concurrent greedy streams produce exactly their solo
tokens; cancellation, a passed deadline and Abort free the request's KV blocks (usage returns to
zero); a repeated prompt hits the prefix cache, visible in the response usage and in /metrics.

Reuses the server harness in server_harness.py. Run through ctest (label
"integration"), or by hand with the same flags as server_integration_test.py.
"""
import os
import sys
import threading
import time
import unittest

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import server_harness as harness  # noqa: E402

SERVER = None
PROMPTS = [
    "The kernel schedules tasks",
    "Memory is allocated in pages",
    "A file system stores data",
    "Interrupts are handled by",
    "Python lists are mutable",
    "Every process has an address space",
    "Locks protect shared state",
    "The network stack receives packets",
]


def setUpModule():
    global SERVER
    SERVER = harness.ServerProcess(extra_flags=("--engine.prefix_caching", "true"))
    harness.SERVER = SERVER  # the harness helpers (stream_all) talk to harness.SERVER
    SERVER.wait_serving()


def tearDownModule():
    if SERVER is not None:
        SERVER.kill()


def greedy_ids(prompt, max_new_tokens):
    response = SERVER.stub.GenerateUnary(harness.greedy(max_new_tokens, text=prompt), timeout=120)
    return list(response.token_ids)


def used_blocks():
    return SERVER.metric("spqr_kv_cache_blocks", {"state": "used"})


def wait_until_no_blocks_used(timeout=10.0):
    """Polls /metrics until no KV block is in use; returns the last value seen."""
    deadline = time.monotonic() + timeout
    value = used_blocks()
    while value != 0 and time.monotonic() < deadline:
        time.sleep(0.05)
        value = used_blocks()
    return value


class BatchingTest(unittest.TestCase):

    def test_concurrent_greedy_streams_equal_solo_runs(self):
        solo = {p: greedy_ids(p, 24) for p in PROMPTS}
        results, errors = {}, []

        def run(prompt):
            try:
                _, _, ids = harness.stream_all(harness.greedy(24, text=prompt), timeout=120)
                results[prompt] = ids
            except Exception as error:  # reported below, with the prompt
                errors.append((prompt, error))

        threads = [threading.Thread(target=run, args=(p,)) for p in PROMPTS * 2]
        for t in threads:
            t.start()
        for t in threads:
            t.join(timeout=180)
        self.assertEqual(errors, [])
        for prompt in PROMPTS:
            self.assertEqual(results[prompt], solo[prompt], prompt)
        self.assertEqual(wait_until_no_blocks_used(), 0)


class BlocksAreFreedTest(unittest.TestCase):

    def long_request(self, **kwargs):
        return harness.greedy(harness.LONG, text="Once upon a time", **kwargs)

    def test_cancel_frees_blocks(self):
        call = SERVER.stub.Generate(self.long_request(), timeout=120)
        next(iter(call))  # generation is under way and holds blocks
        call.cancel()
        self.assertEqual(wait_until_no_blocks_used(), 0)

    def test_deadline_frees_blocks(self):
        # 480 greedy tokens take 0.2 s on an idle machine: the deadline must pass well before.
        call = SERVER.stub.Generate(self.long_request(), timeout=0.05)
        with self.assertRaises(harness.grpc.RpcError) as ctx:
            list(call)
        self.assertEqual(ctx.exception.code(), harness.grpc.StatusCode.DEADLINE_EXCEEDED)
        self.assertEqual(wait_until_no_blocks_used(), 0)

    def test_abort_frees_blocks(self):
        call = SERVER.stub.Generate(self.long_request(request_id="runtime-abort-1"), timeout=120)
        stream = iter(call)
        next(stream)
        found = SERVER.stub.Abort(harness.pb.AbortRequest(request_id="runtime-abort-1"), timeout=10)
        self.assertTrue(found.found)
        last = list(stream)[-1]
        self.assertEqual(last.finish_reason, harness.pb.FINISH_REASON_CANCELLED)
        self.assertEqual(wait_until_no_blocks_used(), 0)


class PrefixCacheTest(unittest.TestCase):

    def test_repeated_prompt_hits_the_prefix_cache(self):
        # Several full 16-token blocks of prompt; the last block is always recomputed.
        prompt = ("The scheduler picks the next task from the run queue of each processor, "
                  "balancing load between processors and respecting the priorities of tasks.")
        hits_before = SERVER.metric("spqr_prefix_cache_hits_total")
        first = SERVER.stub.GenerateUnary(harness.greedy(8, text=prompt), timeout=60)
        second = SERVER.stub.GenerateUnary(harness.greedy(8, text=prompt), timeout=60)
        self.assertGreaterEqual(first.usage.prompt_tokens, 33, "prompt too short for 2 blocks")
        self.assertGreater(second.usage.cached_prompt_tokens, 0)
        self.assertEqual(second.usage.cached_prompt_tokens % 16, 0)
        self.assertEqual(list(second.token_ids), list(first.token_ids))
        self.assertGreater(SERVER.metric("spqr_prefix_cache_hits_total"), hits_before)
        self.assertEqual(wait_until_no_blocks_used(), 0)


if __name__ == "__main__":
    harness.ARGS, rest = harness.parse_args()
    sys.path.insert(0, harness.ARGS.stubs)
    import grpc  # noqa: E402
    import health_pb2  # noqa: E402
    import health_pb2_grpc  # noqa: E402
    from spqr.v1 import spqr_pb2 as pb  # noqa: E402
    from spqr.v1 import spqr_pb2_grpc  # noqa: E402
    # The harness module resolves these names at call time.
    harness.grpc, harness.pb, harness.spqr_pb2_grpc = grpc, pb, spqr_pb2_grpc
    harness.health_pb2, harness.health_pb2_grpc = health_pb2, health_pb2_grpc
    unittest.main(argv=[sys.argv[0], *rest], verbosity=2)
