#!/usr/bin/python3
"""End-to-end chat serving test (issue 15, section 4).

Builds a test model with a byte-level BPE tokenizer.json (tests/data/hf-tokenizers/qwen2, ChatML
special tokens) and the SmolLM2 chat template (tests/data/chat_templates/templates/smollm2.jinja)
with tools/make_test_model.py, quantizes it with the real spqr-quantize, serves it with the real
spqr-server and checks over gRPC:
  * GetModelInfo reports tokenizer_kind "hf-bpe", a chat template and the SpQR quantization;
  * Chat streams text, ChatUnary returns the same text, and both equal a greedy GenerateUnary of
    the prompt rendered by Jinja2 (the engine transformers renders with, an independent
    reference), so the prompt the server built is the reference prompt;
  * Score works on the BPE model;
  * hostile Chat requests (no messages, a bad role, contents over the byte bound, invalid UTF-8)
    get INVALID_ARGUMENT naming the problem;
  * spqr-client's chat command and the Python client's chat / chat_stream work;
  * a model without a chat template (tests/data/test-model, SentencePiece) answers Chat with
    FAILED_PRECONDITION and reports tokenizer_kind "sentencepiece".

Run through ctest (label "integration"), or by hand:
  /usr/bin/python3 tests/integration/chat_serving_integration_test.py \
      --quantize build/quantizer/spqr-quantize --server build/server/spqr-server \
      --client build/server/spqr-client --root . --stubs build/python_stubs
Every server started here is killed at the end; the models live in a temp dir.
"""
import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import unittest

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import server_harness as harness  # noqa: E402

ARGS = None
WORKDIR = None
SPQR_DIR = None
SERVER = None  # the chat model (SpQR, tokenizer.json, template)
PLAIN = None  # tests/data/test-model: SentencePiece, no template
TEMPLATE = None  # the chat template's source

CONVERSATION = [("system", "You are terse."), ("user", "What is the GNU GPL?")]


def parse_args():
    parser = argparse.ArgumentParser()
    for flag in ("--quantize", "--server", "--client", "--root", "--stubs"):
        parser.add_argument(flag, required=True)
    return parser.parse_known_args()


def run(cmd, timeout=60):
    result = subprocess.run(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            timeout=timeout)
    if result.returncode != 0:
        raise AssertionError(f"{' '.join(cmd)} exited {result.returncode}:\n{result.stderr}")
    return result.stdout


def start_server(model_dir):
    harness.ARGS = argparse.Namespace(server=ARGS.server, client=ARGS.client, model=model_dir,
                                      stubs=ARGS.stubs)
    server = harness.ServerProcess()
    server.wait_serving()
    return server


def setUpModule():
    global WORKDIR, SPQR_DIR, SERVER, PLAIN, TEMPLATE
    WORKDIR = tempfile.mkdtemp(prefix="spqr_chat_e2e_")
    dense = os.path.join(WORKDIR, "chat-model")
    template_path = os.path.join(ARGS.root, "tests/data/chat_templates/templates/smollm2.jinja")
    with open(template_path, encoding="utf-8") as f:
        TEMPLATE = f.read()
    run([sys.executable, os.path.join(ARGS.root, "tools/make_test_model.py"), "--out", dense,
         "--hf-tokenizer", os.path.join(ARGS.root, "tests/data/hf-tokenizers/qwen2/tokenizer.json"),
         "--chat-template", template_path, "--vocab", "1024"])
    SPQR_DIR = os.path.join(WORKDIR, "chat-model-spqr")
    run([ARGS.quantize, "--model", dense, "--out", SPQR_DIR, "--calibration",
         os.path.join(ARGS.root, "tools/test_model_text.txt"), "--method", "spqr", "--wbits", "4",
         "--beta1", "16", "--beta2", "16", "--stats_bits", "3", "--tau", "0.2", "--nsamples", "4",
         "--seqlen", "64", "--seed", "0", "--threads", "2"])
    SERVER = start_server(SPQR_DIR)
    PLAIN = start_server(os.path.join(ARGS.root, "tests/data/test-model"))


def tearDownModule():
    for server in (SERVER, PLAIN):
        if server is not None:
            server.kill()
    if WORKDIR is not None:
        shutil.rmtree(WORKDIR, ignore_errors=True)


def chat_request(messages=CONVERSATION, max_new_tokens=12, **kwargs):
    request = pb.ChatRequest(**kwargs)
    for role, content in messages:
        request.messages.add(role=role, content=content)
    request.sampling.temperature = 0
    request.stopping.max_new_tokens = max_new_tokens
    request.response.return_token_ids = True
    return request


def reference_prompt(messages, add_generation_prompt=True):
    """The prompt as transformers renders it: Jinja2 with trim_blocks and lstrip_blocks."""
    env = jinja2.Environment(trim_blocks=True, lstrip_blocks=True)
    return env.from_string(TEMPLATE).render(
        messages=[{"role": r, "content": c} for r, c in messages],
        add_generation_prompt=add_generation_prompt, eos_token="<|im_end|>",
        pad_token="<|endoftext|>")


class ChatTest(unittest.TestCase):

    def test_model_info_reports_tokenizer_and_template(self):
        info = SERVER.stub.GetModelInfo(pb.GetModelInfoRequest(), timeout=10)
        self.assertEqual(info.tokenizer_kind, "hf-bpe")
        self.assertTrue(info.has_chat_template)
        self.assertEqual(info.quantization.method, "spqr")
        self.assertEqual(list(info.eos_token_ids), [0])
        plain = PLAIN.stub.GetModelInfo(pb.GetModelInfoRequest(), timeout=10)
        self.assertEqual(plain.tokenizer_kind, "sentencepiece")
        self.assertFalse(plain.has_chat_template)

    def test_chat_streams_the_reference_prompt_reply(self):
        responses = list(SERVER.stub.Chat(chat_request(), timeout=60))
        text = "".join(r.text for r in responses)
        ids = [i for r in responses for i in r.token_ids]
        last = responses[-1]
        self.assertGreaterEqual(len(responses), 2, "the reply should be streamed in pieces")
        self.assertNotEqual(last.finish_reason, pb.FINISH_REASON_UNSPECIFIED)
        self.assertEqual(len(ids), last.usage.completion_tokens)
        # The same greedy generation from the Jinja2-rendered prompt (special-token texts become
        # their ids; no bos: the template writes none and this tokenizer adds none).
        reference = pb.GenerateRequest(text=reference_prompt(CONVERSATION))
        reference.sampling.temperature = 0
        reference.stopping.max_new_tokens = 12
        reference.stopping.stop_token_ids.append(2)  # <|im_end|>, the template's end of turn
        reference.response.return_token_ids = True
        expected = SERVER.stub.GenerateUnary(reference, timeout=60)
        self.assertEqual(last.usage.prompt_tokens, expected.usage.prompt_tokens)
        self.assertEqual(ids, list(expected.token_ids))
        self.assertEqual(text, expected.text)
        # Unary Chat: the same reply in one response.
        unary = SERVER.stub.ChatUnary(chat_request(), timeout=60)
        self.assertEqual(list(unary.token_ids), ids)
        self.assertEqual(unary.text, text)
        self.assertEqual(unary.finish_reason, last.finish_reason)

    def test_add_generation_prompt_false_renders_without_the_header(self):
        request = chat_request(add_generation_prompt=False, max_new_tokens=2)
        response = SERVER.stub.ChatUnary(request, timeout=60)
        reference = pb.GenerateRequest(text=reference_prompt(CONVERSATION, False))
        reference.stopping.max_new_tokens = 1
        expected = SERVER.stub.GenerateUnary(reference, timeout=60)
        self.assertEqual(response.usage.prompt_tokens, expected.usage.prompt_tokens)

    def test_score_works_on_the_bpe_model(self):
        response = SERVER.stub.Score(pb.ScoreRequest(text="The GNU General Public License"),
                                     timeout=60)
        self.assertGreater(response.num_scored_tokens, 1)
        self.assertLess(response.sum_logprob, 0)
        # A pair with an empty context: this tokenizer adds no BOS (byte-level BPE, SmolLM2
        # style), so add_bos=true cannot help, and the error must say that, not "add_bos is false".
        pairs = pb.ContinuationPairs(pairs=[pb.ContinuationPair(continuation="GNU")])
        with self.assertRaises(grpc.RpcError) as caught:
            SERVER.stub.Score(pb.ScoreRequest(pairs=pairs, add_bos=True), timeout=30)
        self.assertEqual(caught.exception.code(), grpc.StatusCode.INVALID_ARGUMENT)
        self.assertIn("pairs.pairs[0].context is empty and this model's tokenizer adds no BOS",
                      caught.exception.details())

    def assert_refused(self, call, request, code, fragment):
        with self.assertRaises(grpc.RpcError) as caught:
            result = call(request, timeout=30)
            if not isinstance(result, pb.GenerateResponse):
                list(result)
        self.assertEqual(caught.exception.code(), code, caught.exception.details())
        self.assertIn(fragment, caught.exception.details())

    def test_hostile_requests_get_clear_errors(self):
        invalid = grpc.StatusCode.INVALID_ARGUMENT
        for call in (SERVER.stub.Chat, SERVER.stub.ChatUnary):
            self.assert_refused(call, chat_request(messages=[]), invalid,
                                "messages must not be empty")
            self.assert_refused(call, chat_request(messages=[("us er", "hi")]), invalid,
                                "messages[0].role may only contain")
            self.assert_refused(call, chat_request(messages=[("", "hi")]), invalid,
                                "messages[0].role has 0 bytes")
        info = SERVER.stub.GetModelInfo(pb.GetModelInfoRequest(), timeout=10)
        huge = "a" * (info.limits.max_prompt_bytes + 1)
        self.assert_refused(SERVER.stub.ChatUnary, chat_request(messages=[("user", huge)]),
                            invalid, "limits.max_prompt_tokens")
        # Within the byte bound but over the token bound once rendered.
        long_text = " ".join(["GNU"] * info.limits.max_prompt_tokens)
        self.assert_refused(SERVER.stub.ChatUnary, chat_request(messages=[("user", long_text)]),
                            invalid, "the chat prompt")
        # Invalid UTF-8 in a content: protobuf would not serialize it, so the bytes are made here:
        # ChatRequest{messages: [{role: "user", content: b"\xff\xfe"}]}.
        message = b"\x0a\x04user" + b"\x12\x02\xff\xfe"
        raw = b"\x0a" + bytes([len(message)]) + message
        call = SERVER.channel.unary_unary("/spqr.v1.SpqrService/ChatUnary")
        with self.assertRaises(grpc.RpcError) as caught:
            call(raw, timeout=30)
        self.assertEqual(caught.exception.code(), invalid)
        self.assertIn("invalid UTF-8", caught.exception.details())
        self.assertIn("messages[0].content", caught.exception.details())
        # The server is still fine.
        self.assertTrue(SERVER.stub.ChatUnary(chat_request(max_new_tokens=1), timeout=60).text
                        is not None)

    def test_model_without_template_refuses_chat(self):
        for call in (PLAIN.stub.Chat, PLAIN.stub.ChatUnary):
            self.assert_refused(call, chat_request(), grpc.StatusCode.FAILED_PRECONDITION,
                                "no chat template")

    def test_python_client_chat(self):
        sys.path.insert(0, os.path.join(ARGS.root, "clients/python"))
        from spqr_client import Client
        with Client(SERVER.address, stubs_dir=ARGS.stubs) as client:
            options = dict(max_new_tokens=6, temperature=0, return_token_ids=True)
            unary = client.chat(CONVERSATION, **options)
            chunks = list(client.chat_stream(
                [{"role": r, "content": c} for r, c in CONVERSATION], **options))
        self.assertEqual([i for c in chunks for i in c.token_ids], list(unary.token_ids))
        self.assertEqual("".join(c.text for c in chunks), unary.text)
        self.assertEqual(len(unary.token_ids), 6)

    def test_client_chat_command(self):
        for extra in ([], ["--unary"]):
            out = run([ARGS.client, "--address", SERVER.address, "chat", "Hello",
                       "--system", "Be brief.", "--max-new-tokens", "4", "--temperature", "0",
                       *extra])
            self.assertTrue(out.endswith("\n"))


if __name__ == "__main__":
    ARGS, rest = parse_args()
    globals().update(harness.import_stubs(ARGS.stubs))
    import jinja2  # noqa: E402
    unittest.main(argv=[sys.argv[0], *rest], verbosity=2)
