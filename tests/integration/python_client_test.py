#!/usr/bin/env python3
"""python_client_*: the Python client (clients/python/spqr_client.py, grpcio: an independent gRPC
implementation) against the real spqr-server on 127.0.0.1.

It streams a greedy generation from a token-id prompt, checks it against the unary RPC and against
Score on the same tokens (each generated token must be the greedy one, with the same log-probability),
scores a text and (context, continuation) pairs, streams from several threads at once, aborts a
long stream from a second call by its server-assigned request id, lists the services through
reflection, and checks error codes and health.

usage: python_client_test.py --server BIN --model DIR --config YAML --stubs DIR --client-dir DIR
"""

import argparse
import math
import sys
import threading
import unittest

import grpc

ARGS = None


class PythonClientTest(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        sys.path.insert(0, ARGS.client_dir)
        from deploy_testlib import SpqrServer
        import spqr_client

        cls.server = SpqrServer(ARGS.server, ARGS.model, ARGS.config)
        cls.server.start(timeout=120)
        try:
            cls.client = spqr_client.Client(cls.server.address, stubs_dir=ARGS.stubs, timeout=60)
            cls.client.wait_until_serving(timeout=30)
            cls.info = cls.client.info()
        except BaseException:
            cls.server.stop()
            raise

    @classmethod
    def tearDownClass(cls):
        cls.client.close()
        cls.server.stop()

    def prompt_ids(self):
        """A short token-id prompt: bos (when the model has one) and a few ids in the vocab."""
        vocab = self.info.architecture.vocab_size
        ids = [self.info.bos_token_id] if self.info.bos_token_id >= 0 else []
        return ids + [(37 * k + 11) % vocab for k in range(1, 7)]

    def test_health_and_info(self):
        self.assertEqual(self.client.health(), "SERVING")
        self.assertEqual(self.client.health("spqr.v1.SpqrService"), "SERVING")
        self.assertGreater(self.info.architecture.vocab_size, 0)
        self.assertGreater(self.info.limits.kv_blocks_total, 0)
        self.assertTrue(self.info.server_version)

    def test_reflection_lists_the_services(self):
        import reflection_pb2
        import reflection_pb2_grpc

        with grpc.insecure_channel(self.server.address) as channel:
            stub = reflection_pb2_grpc.ServerReflectionStub(channel)
            request = reflection_pb2.ServerReflectionRequest(list_services="")
            responses = list(stub.ServerReflectionInfo(iter([request]), timeout=10))
        names = {s.name for s in responses[0].list_services_response.service}
        self.assertIn("spqr.v1.SpqrService", names)
        self.assertIn("grpc.health.v1.Health", names)

    def test_stream_matches_unary_and_score(self):
        prompt = self.prompt_ids()
        new_tokens = 8
        options = dict(max_new_tokens=new_tokens, temperature=0.0, ignore_eos=True,
                       return_token_ids=True, logprobs=True)
        chunks = list(self.client.generate_stream(prompt, request_id="py-stream", **options))
        self.assertGreaterEqual(len(chunks), 1)
        for chunk in chunks:
            self.assertEqual(chunk.request_id, "py-stream")
        for chunk in chunks[:-1]:
            self.assertEqual(chunk.finish_reason, 0, "only the last chunk carries finish_reason")
        last = chunks[-1]
        self.assertEqual(self.client.finish_reason_name(last), "FINISH_REASON_LENGTH")
        self.assertEqual(last.usage.prompt_tokens, len(prompt))
        self.assertEqual(last.usage.completion_tokens, new_tokens)
        streamed_ids = [t for c in chunks for t in c.token_ids]
        streamed_text = "".join(c.text for c in chunks)
        streamed_logprobs = [lp for c in chunks for lp in c.logprobs]
        self.assertEqual(len(streamed_ids), new_tokens)
        self.assertEqual([lp.token_id for lp in streamed_logprobs], streamed_ids)

        unary = self.client.generate(prompt, **options)
        self.assertEqual(list(unary.token_ids), streamed_ids, "greedy stream and unary differ")
        self.assertEqual(unary.text, streamed_text)

        # Score the prompt + generated tokens: every generated position must be greedy, with the
        # log-probability the generation reported.
        scored = self.client.score(token_ids=prompt + streamed_ids)
        self.assertEqual(scored.num_scored_tokens, len(prompt) + new_tokens - 1)
        self.assertEqual(len(scored.token_logprobs), scored.num_scored_tokens)
        self.assertAlmostEqual(scored.sum_logprob,
                               sum(t.logprob for t in scored.token_logprobs), places=2)
        generated_part = scored.token_logprobs[len(prompt) - 1:]
        for position, (scored_token, generated) in enumerate(zip(generated_part,
                                                                 streamed_logprobs)):
            self.assertEqual(scored_token.token_id, generated.token_id)
            self.assertTrue(scored_token.is_greedy, f"generated token {position} is not greedy")
            self.assertLess(abs(scored_token.logprob - generated.logprob), 2e-2,
                            f"logprob of generated token {position}: score "
                            f"{scored_token.logprob} vs generate {generated.logprob}")

    def test_sampled_stream_is_reproducible_with_seed(self):
        options = dict(max_new_tokens=6, temperature=0.8, seed=1234, ignore_eos=True,
                       return_token_ids=True)
        first = [t for c in self.client.generate_stream("The license", **options)
                 for t in c.token_ids]
        second = [t for c in self.client.generate_stream("The license", **options)
                  for t in c.token_ids]
        self.assertEqual(len(first), 6)
        self.assertEqual(first, second)

    def test_concurrent_streams(self):
        """Several Python threads stream at once; the engine batches them into shared steps."""
        prompt = self.prompt_ids()
        options = dict(max_new_tokens=6, temperature=0.0, ignore_eos=True, return_token_ids=True)
        alone = [t for c in self.client.generate_stream(prompt, **options) for t in c.token_ids]
        results, errors = {}, []

        def stream(index):
            try:
                results[index] = [t for c in self.client.generate_stream(prompt, **options)
                                  for t in c.token_ids]
            except grpc.RpcError as error:
                errors.append(f"{error.code().name}: {error.details()}")

        threads = [threading.Thread(target=stream, args=(i,)) for i in range(6)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(timeout=60)
        self.assertEqual(errors, [])
        # Greedy decoding does not depend on what else shares the batch.
        self.assertEqual([results[i] for i in range(6)], [alone] * 6)

    def test_score_text_and_pairs(self):
        text = self.client.score("The GNU General Public License is a free license")
        self.assertGreater(text.num_scored_tokens, 1)
        self.assertTrue(math.isfinite(text.sum_logprob))
        self.assertLess(text.sum_logprob, 0.0)
        pairs = self.client.score(pairs=[("The GNU General Public", " License"),
                                         ("The GNU General Public", " License is free")])
        self.assertEqual(len(pairs.pair_scores), 2)
        short, long = pairs.pair_scores
        self.assertGreaterEqual(long.num_continuation_tokens, short.num_continuation_tokens)
        # A longer continuation that extends a shorter one cannot be more likely.
        self.assertLessEqual(long.sum_logprob, short.sum_logprob + 1e-4)

    def test_invalid_argument_reaches_python(self):
        with self.assertRaises(grpc.RpcError) as caught:
            self.client.generate("hello", temperature=-1.0, max_new_tokens=2)
        self.assertEqual(caught.exception.code(), grpc.StatusCode.INVALID_ARGUMENT)
        self.assertIn("temperature", caught.exception.details())
        with self.assertRaises(ValueError):
            self.client.score()

    def test_abort_by_server_assigned_request_id(self):
        """A long stream with no client request id: its id comes from the initial metadata, an
        Abort from a second call ends it normally with FINISH_REASON_CANCELLED."""
        prompt = self.prompt_ids()
        limits = self.info.limits
        long_run = min(limits.max_new_tokens, limits.max_context_tokens - len(prompt))
        self.assertGreater(long_run, 64)
        with self.client.start_generation(prompt, max_new_tokens=long_run, temperature=0.0,
                                          ignore_eos=True) as generation:
            request_id = generation.request_id  # before any token: the request may be queued
            self.assertRegex(request_id, r"^[0-9a-f]{32}$")  # 128 random bits
            chunks = iter(generation)
            first = next(chunks)
            self.assertEqual(first.request_id, request_id)
            # A second client (its own connection) aborts it.
            spqr_client = sys.modules["spqr_client"]
            with spqr_client.Client(self.server.address, stubs_dir=ARGS.stubs,
                                    timeout=30) as other:
                self.assertTrue(other.abort(request_id))
            rest = list(chunks)  # ends without raising: the RPC status is OK
        last = rest[-1] if rest else first
        self.assertEqual(self.client.finish_reason_name(last), "FINISH_REASON_CANCELLED")
        self.assertLess(last.usage.completion_tokens, long_run)
        # Once ended, the id is no longer live.
        self.assertFalse(self.client.abort(request_id))
        with self.assertRaises(ValueError):
            self.client.abort("")

    def test_closing_a_stream_early_cancels_it(self):
        stream = self.client.generate_stream("Once upon a time", max_new_tokens=200,
                                             temperature=0.0, ignore_eos=True)
        next(stream)
        stream.close()
        # The server is still answering normally afterwards.
        again = self.client.generate("Once upon a time", max_new_tokens=2, temperature=0.0,
                                     ignore_eos=True)
        self.assertEqual(self.client.finish_reason_name(again), "FINISH_REASON_LENGTH")


def main():
    global ARGS
    parser = argparse.ArgumentParser()
    for flag in ("--server", "--model", "--config", "--stubs", "--client-dir"):
        parser.add_argument(flag, required=True)
    ARGS, rest = parser.parse_known_args()
    unittest.main(argv=[sys.argv[0], "-v", *rest])


if __name__ == "__main__":
    main()
