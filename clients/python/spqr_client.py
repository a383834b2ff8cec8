"""A small Python client for spqr-server (the spqr.v1 gRPC API, plus grpc.health.v1).

It uses Debian's python3-grpcio and the Python stubs the build generates from proto/ (CMake target
spqr_proto_python, written to <build dir>/python_stubs). Point the client at them with
``stubs_dir=`` or the SPQR_PYTHON_STUBS environment variable, or put that folder on PYTHONPATH.

    from spqr_client import Client
    with Client("127.0.0.1:50051", stubs_dir="build/python_stubs") as client:
        client.wait_until_serving(timeout=60)
        for chunk in client.generate_stream("The GNU General Public License is",
                                            max_new_tokens=32, temperature=0.7, seed=1):
            print(chunk.text, end="", flush=True)
        reply = client.chat([("user", "What is free software?")], max_new_tokens=64)


To stop a generation from elsewhere (another thread, process or connection), start it with
start_generation(), whose .request_id is the id the server uses (yours, or the one it assigned), and
call abort(request_id): the stream then ends normally with finish_reason FINISH_REASON_CANCELLED.

Responses are the protobuf messages of proto/spqr/v1/spqr.proto (GenerateResponse, ScoreResponse,
ModelInfo), whose fields are documented there. Failed calls raise grpc.RpcError, whose .code() is
the gRPC status (INVALID_ARGUMENT names the bad field, RESOURCE_EXHAUSTED means the server's queue
is full, UNAVAILABLE that it is loading or draining).
"""

import importlib
import os
import sys
import time

import grpc

__all__ = ["Client", "Generation", "load_stubs"]

_STUBS = None


def load_stubs(stubs_dir=None):
    """Imports the generated modules; returns (spqr_pb2, spqr_pb2_grpc, health_pb2, health_pb2_grpc).

    stubs_dir, else $SPQR_PYTHON_STUBS, is added to sys.path first; with neither, the modules must
    already be importable (PYTHONPATH).
    """
    global _STUBS
    if _STUBS is not None:
        return _STUBS
    folder = stubs_dir or os.environ.get("SPQR_PYTHON_STUBS")
    if folder:
        folder = os.path.abspath(folder)
        if folder not in sys.path:
            sys.path.insert(0, folder)
    try:
        modules = tuple(
            importlib.import_module(name)
            for name in ("spqr.v1.spqr_pb2", "spqr.v1.spqr_pb2_grpc", "health_pb2",
                         "health_pb2_grpc"))
    except ImportError as error:
        raise ImportError(
            f"spqr_client: cannot import the generated gRPC stubs ({error}). Build them with "
            "`cmake --build build --target spqr_proto_python` and pass "
            "stubs_dir='build/python_stubs' (or set SPQR_PYTHON_STUBS / PYTHONPATH)") from error
    _STUBS = modules
    return modules


class Generation:
    """A streaming generation in progress (Client.start_generation).

    Iterate it for the GenerateResponse chunks (the last one has finish_reason and usage set).
    request_id waits for the call's initial metadata ("spqr-request-id", sent before any token), so
    it is known even while the request is still queued. cancel() (or leaving a `with` block) ends
    the call; it is a no-op once the stream has ended.
    """

    def __init__(self, call):
        self._call = call

    @property
    def request_id(self):
        """The request id of this generation on the server ("" if the server sent none)."""
        for key, value in self._call.initial_metadata():
            if key == "spqr-request-id":
                return value
        return ""

    def __iter__(self):
        return iter(self._call)

    def cancel(self):
        self._call.cancel()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.cancel()


class Client:
    """A connection to one spqr-server.

    address: "host:port" of the gRPC endpoint.
    stubs_dir: folder of the generated stubs (see load_stubs).
    timeout: default deadline in seconds of every call (None: no deadline).
    credentials: grpc.ChannelCredentials for a TLS endpoint (None: plaintext).
    metadata: (key, value) pairs sent with every call (e.g. an API key header).
    max_message_bytes: largest message sent or received (the server's server.max_message_bytes).
    """

    def __init__(self, address, stubs_dir=None, timeout=None, credentials=None, metadata=(),
                 max_message_bytes=16 * 1024 * 1024):
        self._pb, pb_grpc, self._health_pb, health_grpc = load_stubs(stubs_dir)
        options = [("grpc.max_send_message_length", max_message_bytes),
                   ("grpc.max_receive_message_length", max_message_bytes)]
        if credentials is None:
            self._channel = grpc.insecure_channel(address, options=options)
        else:
            self._channel = grpc.secure_channel(address, credentials, options=options)
        self._stub = pb_grpc.SpqrServiceStub(self._channel)
        self._health = health_grpc.HealthStub(self._channel)
        self._timeout = timeout
        self._metadata = tuple(metadata)

    # -- lifecycle -----------------------------------------------------------------------------

    def close(self):
        self._channel.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    @property
    def messages(self):
        """The spqr.v1 message module (spqr_pb2), e.g. for FinishReason names."""
        return self._pb

    # -- requests ------------------------------------------------------------------------------

    def generate_request(self, prompt, *, max_new_tokens=None, min_new_tokens=0, temperature=None,
                         top_k=0, top_p=None, min_p=0.0, seed=None, repetition_penalty=None,
                         presence_penalty=0.0, frequency_penalty=0.0, stop=(), stop_token_ids=(),
                         ignore_eos=False, return_token_ids=False, logprobs=False, top_logprobs=0,
                         add_bos=None, request_id="", priority=0):
        """Builds a GenerateRequest. prompt: text (str) or token ids (list of int).

        Arguments left at None/0 take the server's defaults (proto/spqr/v1/spqr.proto).
        """
        pb = self._pb
        request = pb.GenerateRequest(request_id=request_id, priority=priority)
        if isinstance(prompt, str):
            request.text = prompt
        else:
            request.token_ids.ids.extend(int(t) for t in prompt)
        if add_bos is not None:
            request.add_bos = add_bos
        sampling = request.sampling
        if temperature is not None:
            sampling.temperature = temperature
        sampling.top_k = top_k
        if top_p is not None:
            sampling.top_p = top_p
        sampling.min_p = min_p
        if seed is not None:
            sampling.seed = seed
        if repetition_penalty is not None:
            request.penalties.repetition_penalty = repetition_penalty
        request.penalties.presence_penalty = presence_penalty
        request.penalties.frequency_penalty = frequency_penalty
        stopping = request.stopping
        if max_new_tokens is not None:
            stopping.max_new_tokens = max_new_tokens
        stopping.min_new_tokens = min_new_tokens
        stopping.stop_strings.extend(stop)
        stopping.stop_token_ids.extend(stop_token_ids)
        stopping.ignore_eos = ignore_eos
        request.response.return_token_ids = return_token_ids
        request.response.logprobs = logprobs
        request.response.top_logprobs = top_logprobs
        return request

    def chat_request(self, messages, *, add_generation_prompt=None, **options):
        """Builds a ChatRequest. messages: (role, content) pairs or {"role": .., "content": ..}
        dicts, oldest first. options: the keyword arguments of generate_request but prompt and
        add_bos (the chat template decides the special tokens)."""
        pb = self._pb
        if "add_bos" in options:
            raise TypeError("chat_request: add_bos does not apply (the chat template decides)")
        generate = self.generate_request("", **options)
        request = pb.ChatRequest(request_id=generate.request_id, priority=generate.priority)
        for message in messages:
            role, content = ((message["role"], message["content"]) if isinstance(message, dict)
                             else message)
            request.messages.add(role=role, content=content)
        if add_generation_prompt is not None:
            request.add_generation_prompt = add_generation_prompt
        request.sampling.CopyFrom(generate.sampling)
        request.penalties.CopyFrom(generate.penalties)
        request.stopping.CopyFrom(generate.stopping)
        request.response.CopyFrom(generate.response)
        return request

    def start_chat(self, messages, *, timeout=None, **options):
        """Starts a streaming chat (the Chat RPC) and returns its Generation, like
        start_generation. options: the keyword arguments of chat_request."""
        request = self.chat_request(messages, **options)
        return Generation(self._stub.Chat(request, timeout=self._deadline(timeout),
                                          metadata=self._metadata))

    def chat_stream(self, messages, *, timeout=None, **options):
        """Streams the assistant's reply: yields GenerateResponse chunks, like generate_stream."""
        with self.start_chat(messages, timeout=timeout, **options) as generation:
            for chunk in generation:
                yield chunk

    def chat(self, messages, *, timeout=None, **options):
        """One GenerateResponse with the whole reply (the ChatUnary RPC)."""
        request = self.chat_request(messages, **options)
        return self._stub.ChatUnary(request, timeout=self._deadline(timeout),
                                    metadata=self._metadata)

    def start_generation(self, prompt, *, timeout=None, **options):
        """Starts a streaming generation (the Generate RPC) and returns its Generation: iterate it
        for the chunks; its request_id is what abort() takes. options: the keyword arguments of
        generate_request."""
        request = self.generate_request(prompt, **options)
        return Generation(self._stub.Generate(request, timeout=self._deadline(timeout),
                                              metadata=self._metadata))

    def generate_stream(self, prompt, *, timeout=None, **options):
        """Streams a generation: yields GenerateResponse chunks (text deltas); the last one has
        finish_reason and usage set. Closing the iterator early cancels the call on the server.
        options: the keyword arguments of generate_request."""
        with self.start_generation(prompt, timeout=timeout, **options) as generation:
            for chunk in generation:
                yield chunk

    def abort(self, request_id, timeout=None):
        """Cancels every live Generate, GenerateUnary, Chat, ChatUnary or Score call with this
        request id, from
        any connection (the Abort RPC; with API keys, only calls made with the same key). Returns
        True when one was found; False when none is live (unknown or already finished). An aborted
        generation ends normally, its last chunk with finish_reason FINISH_REASON_CANCELLED; an
        aborted Score call fails with CANCELLED."""
        if not request_id:
            raise ValueError("abort: request_id must not be empty")
        response = self._stub.Abort(self._pb.AbortRequest(request_id=request_id),
                                    timeout=self._deadline(timeout), metadata=self._metadata)
        return response.found

    def generate(self, prompt, *, timeout=None, **options):
        """One GenerateResponse with the whole output (the GenerateUnary RPC)."""
        request = self.generate_request(prompt, **options)
        return self._stub.GenerateUnary(request, timeout=self._deadline(timeout),
                                        metadata=self._metadata)

    def score(self, text=None, *, pairs=None, token_ids=None, top_logprobs=0, add_bos=None,
              request_id="", priority=0, timeout=None):
        """Log-likelihoods (the Score RPC). Exactly one of:
        text: a string, every token after the first scored given those before it;
        token_ids: the same on already tokenized input;
        pairs: [(context, continuation), ...], log P(continuation | context) per pair.
        Returns a ScoreResponse (sum_logprob / token_logprobs, or pair_scores for pairs)."""
        given = sum(x is not None for x in (text, pairs, token_ids))
        if given != 1:
            raise ValueError("score: give exactly one of text, pairs, token_ids")
        pb = self._pb
        request = pb.ScoreRequest(top_logprobs=top_logprobs, request_id=request_id,
                                  priority=priority)
        if text is not None:
            request.text = text
        elif token_ids is not None:
            request.token_ids.ids.extend(int(t) for t in token_ids)
        else:
            for context, continuation in pairs:
                request.pairs.pairs.add(context=context, continuation=continuation)
        if add_bos is not None:
            request.add_bos = add_bos
        return self._stub.Score(request, timeout=self._deadline(timeout),
                                metadata=self._metadata)

    def info(self, timeout=None):
        """The ModelInfo (architecture, quantization, serving limits) of the loaded model."""
        return self._stub.GetModelInfo(self._pb.GetModelInfoRequest(),
                                       timeout=self._deadline(timeout), metadata=self._metadata)

    def health(self, service="", timeout=None):
        """grpc.health.v1 status name: "SERVING", "NOT_SERVING", ... ("" = the whole server,
        "spqr.v1.SpqrService" = the API)."""
        health_pb = self._health_pb
        response = self._health.Check(health_pb.HealthCheckRequest(service=service),
                                      timeout=self._deadline(timeout), metadata=self._metadata)
        return health_pb.HealthCheckResponse.ServingStatus.Name(response.status)

    def wait_until_serving(self, timeout=60.0, service=""):
        """Polls health until SERVING; raises TimeoutError after `timeout` seconds."""
        end = time.monotonic() + timeout
        last = "no answer"
        while time.monotonic() < end:
            try:
                last = self.health(service=service, timeout=min(2.0, max(0.1, end - time.monotonic())))
                if last == "SERVING":
                    return
            except grpc.RpcError as error:
                last = f"{error.code().name}: {error.details()}"
            time.sleep(0.2)
        raise TimeoutError(f"spqr_client: server not SERVING after {timeout} s (last: {last})")

    def finish_reason_name(self, response):
        """"FINISH_REASON_LENGTH", ... of a GenerateResponse."""
        return self._pb.FinishReason.Name(response.finish_reason)

    def _deadline(self, timeout):
        return timeout if timeout is not None else self._timeout
