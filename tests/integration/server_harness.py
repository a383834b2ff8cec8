"""Harness shared by the integration tests that run the real spqr-server: the command-line flags,
a server child process on 127.0.0.1 with ephemeral ports (ServerProcess), and request helpers.

Not a test itself. A test script parses its flags with parse_args(), sets server_harness.ARGS,
imports the generated stubs with import_stubs() and, when it shares one server between its
cases, sets server_harness.SERVER (stream_all talks to it). Users: server_integration_test.py,
server_integration_lifecycle_test.py, server_runtime_test.py, spqr_serving_integration_test.py.
Every wait is bounded.
"""
import argparse
import queue
import re
import signal
import subprocess
import sys
import threading
import time
import urllib.request

ARGS = None  # parse_args()'s flags, set by the test script
SERVER = None  # the server a test script shares between its cases (stream_all uses it)
# The stubs' modules, set by import_stubs() (or assigned by the test script).
grpc = pb = spqr_pb2_grpc = health_pb2 = health_pb2_grpc = None
reflection_pb2 = reflection_pb2_grpc = None
WAIT_S = 90  # bound for start-up (model load + warm-up on a loaded CI machine)
LONG = 480  # tokens of a "long" generation: fits the test model's 512-token context


def parse_args():
    parser = argparse.ArgumentParser()
    parser.add_argument("--server", required=True)
    parser.add_argument("--client", required=True)
    parser.add_argument("--model", required=True)
    parser.add_argument("--stubs", required=True)
    args, rest = parser.parse_known_args()
    return args, rest


def import_stubs(stubs_dir):
    """Imports grpc and the stubs generated in stubs_dir (spqr.v1, grpc.health.v1, reflection),
    makes them globals of this module (ServerProcess and greedy use them) and returns them by
    name, for the test script's own globals: globals().update(import_stubs(ARGS.stubs))."""
    sys.path.insert(0, stubs_dir)
    import grpc
    import health_pb2
    import health_pb2_grpc
    import reflection_pb2
    import reflection_pb2_grpc
    from spqr.v1 import spqr_pb2 as pb
    from spqr.v1 import spqr_pb2_grpc
    modules = {"grpc": grpc, "health_pb2": health_pb2, "health_pb2_grpc": health_pb2_grpc,
               "reflection_pb2": reflection_pb2, "reflection_pb2_grpc": reflection_pb2_grpc,
               "pb": pb, "spqr_pb2_grpc": spqr_pb2_grpc}
    globals().update(modules)
    return modules


class ChildOutput:
    """Reads a child process's stdout and stderr on two threads: stdout lines go to a queue that
    wait_for() consumes, stderr lines are kept in a list for error messages."""

    def __init__(self, proc):
        self.proc = proc
        self.lines = queue.Queue()
        self.stderr = []
        for stream, sink in ((proc.stdout, self.lines.put), (proc.stderr, self.stderr.append)):
            threading.Thread(target=self._pump, args=(stream, sink), daemon=True).start()

    @staticmethod
    def _pump(stream, sink):
        for line in stream:
            sink(line.rstrip("\n"))

    def wait_for(self, pattern, timeout):
        """The match of the first stdout line matching `pattern` within `timeout` seconds; None when
        the time runs out or the process exits first."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                line = self.lines.get(timeout=0.2)
            except queue.Empty:
                if self.proc.poll() is not None:
                    return None
                continue
            match = re.match(pattern, line)
            if match:
                return match
        return None


class ServerProcess:
    """A spqr-server child process; parses the bound ports from its stdout."""

    def __init__(self, extra_flags=()):
        cmd = [ARGS.server, "--model", ARGS.model, "--listen", "127.0.0.1:0",
               "--metrics.address", "127.0.0.1", "--metrics_port", "0",
               "--engine.kv_cache_bytes", str(16 << 20), *extra_flags]
        self.proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                     text=True)
        self.output = ChildOutput(self.proc)
        self.stderr_lines = self.output.stderr
        self.port = int(self.wait_for_line(r"^listening on 127\.0\.0\.1:(\d+)$").group(1))
        self.metrics_port = int(self.wait_for_line(r"^metrics on 127\.0\.0\.1:(\d+)$").group(1))
        self.address = f"127.0.0.1:{self.port}"
        self.channel = grpc.insecure_channel(self.address)
        self.stub = spqr_pb2_grpc.SpqrServiceStub(self.channel)
        self.health = health_pb2_grpc.HealthStub(self.channel)

    def wait_for_line(self, pattern, timeout=WAIT_S):
        match = self.output.wait_for(pattern, timeout)
        if match:
            return match
        raise AssertionError(f"server did not print /{pattern}/ in {timeout} s; stderr:\n" +
                             "\n".join(self.stderr_lines[-30:]))

    def health_status(self, service=""):
        response = self.health.Check(health_pb2.HealthCheckRequest(service=service), timeout=5)
        return response.status

    def wait_serving(self):
        """Polls health from the first moment; returns the statuses seen, SERVING last."""
        seen = []
        deadline = time.monotonic() + WAIT_S
        while time.monotonic() < deadline:
            status = self.health_status()
            if not seen or seen[-1] != status:
                seen.append(status)
            if status == health_pb2.HealthCheckResponse.SERVING:
                return seen
            time.sleep(0.02)
        raise AssertionError(f"not SERVING after {WAIT_S} s; stderr:\n" +
                             "\n".join(self.stderr_lines[-30:]))

    def metrics_text(self):
        url = f"http://127.0.0.1:{self.metrics_port}/metrics"
        with urllib.request.urlopen(url, timeout=5) as response:
            return response.read().decode()

    def metric(self, name, labels=None):
        """The value of one sample (0 when absent)."""
        want = ""
        if labels:
            want = "{" + ",".join(f'{k}="{v}"' for k, v in sorted(labels.items())) + "}"
        for line in self.metrics_text().splitlines():
            if line.startswith("#"):
                continue
            key, _, value = line.rpartition(" ")
            if key == name + want:
                return float(value)
        return 0.0

    def stop(self, sig=signal.SIGTERM, timeout=30):
        """Sends `sig` and returns the exit code (kills after `timeout`)."""
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
            try:
                self.proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=10)
                raise AssertionError(f"server did not exit within {timeout} s of signal {sig}")
        return self.proc.returncode

    def kill(self):
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(timeout=10)
        self.channel.close()
        self.proc.stdout.close()
        self.proc.stderr.close()


def greedy(max_new_tokens, **kwargs):
    """A greedy request that ignores eos (so it runs max_new_tokens) and returns token ids."""
    kwargs.setdefault("response", pb.ResponseOptions(return_token_ids=True))
    return pb.GenerateRequest(sampling=pb.SamplingParams(temperature=0.0),
                              stopping=pb.Stopping(max_new_tokens=max_new_tokens,
                                                   ignore_eos=True), **kwargs)


def stream_all(request, timeout=60):
    responses = list(SERVER.stub.Generate(request, timeout=timeout))
    text = "".join(r.text for r in responses)
    ids = [i for r in responses for i in r.token_ids]
    return responses, text, ids

