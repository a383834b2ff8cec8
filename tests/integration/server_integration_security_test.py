#!/usr/bin/python3
"""Integration test of spqr-server's transport security and access control: TLS, mTLS, API keys
(on spqr.v1 always; on health and reflection when server.auth.exempt_* is false) and the
per-connection stream limit. Starts the real binary on 127.0.0.1 (ephemeral ports) with
throwaway certificates that openssl makes in a temporary folder.

  /usr/bin/python3 tests/integration/server_integration_security_test.py \
      --server build/server/spqr-server --model tests/data/test-model --stubs build/python_stubs \
      --client build/server/spqr-client
"""
import argparse
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
import unittest
import urllib.request

from server_harness import ChildOutput

ARGS = None
WAIT_S = 90
CERTS = None  # folder of the generated certificates
LONG = 480


def parse_args():
    parser = argparse.ArgumentParser()
    parser.add_argument("--server", required=True)
    parser.add_argument("--model", required=True)
    parser.add_argument("--stubs", required=True)
    parser.add_argument("--client", default="", help="spqr-client binary (its TLS/key flags)")
    return parser.parse_known_args()


def openssl(*args):
    subprocess.run(["openssl", *args], cwd=CERTS, check=True, capture_output=True, timeout=60)


def make_ca(name):
    openssl("req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1",
            "-nodes", "-keyout", f"{name}.key", "-out", f"{name}.pem", "-days", "1",
            "-subj", f"/CN={name}")


def make_cert(name, ca, san=None):
    openssl("req", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes",
            "-keyout", f"{name}.key", "-out", f"{name}.csr", "-subj", f"/CN={name}")
    ext = os.path.join(CERTS, f"{name}.ext")
    with open(ext, "w") as f:
        f.write(f"subjectAltName={san}\n" if san else "basicConstraints=CA:FALSE\n")
    openssl("x509", "-req", "-in", f"{name}.csr", "-CA", f"{ca}.pem", "-CAkey", f"{ca}.key",
            "-CAcreateserial", "-out", f"{name}.pem", "-days", "1", "-extfile", ext)


def read(name):
    with open(os.path.join(CERTS, name), "rb") as f:
        return f.read()


def write_key_file(name, text):
    """Writes an API-key file (server.auth.api_keys_file) `name` into CERTS; returns its path."""
    path = os.path.join(CERTS, name)
    with open(path, "w") as f:
        f.write(text)
    return path


def setUpModule():
    global CERTS
    CERTS = tempfile.mkdtemp(prefix="spqr-certs-")
    make_ca("ca")
    make_ca("other-ca")
    make_cert("server", "ca", san="DNS:localhost,IP:127.0.0.1")
    make_cert("client", "ca")
    make_cert("intruder", "other-ca")


def tearDownModule():
    shutil.rmtree(CERTS, ignore_errors=True)


class Server:
    """A spqr-server child; waits for "ready" (health is not reachable in plaintext under TLS)."""

    def __init__(self, flags, env=None, expect_ready=True):
        cmd = [ARGS.server, "--model", ARGS.model, "--listen", "127.0.0.1:0",
               "--metrics.address", "127.0.0.1", "--metrics_port", "0",
               "--engine.kv_cache_bytes", str(16 << 20), *flags]
        self.proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                     text=True, env={**os.environ, **(env or {})})
        self.output = ChildOutput(self.proc)
        self.stderr = self.output.stderr
        if not expect_ready:
            return
        self.port = int(self.wait_for(r"^listening on 127\.0\.0\.1:(\d+)$").group(1))
        self.metrics_port = int(self.wait_for(r"^metrics on 127\.0\.0\.1:(\d+)$").group(1))
        self.wait_for(r"^ready$")
        self.address = f"127.0.0.1:{self.port}"

    def wait_for(self, pattern):
        match = self.output.wait_for(pattern, WAIT_S)
        if match:
            return match
        raise AssertionError(f"no /{pattern}/; stderr:\n" + "\n".join(self.stderr[-20:]))

    def metric(self, name, labels):
        want = name + "{" + ",".join(f'{k}="{v}"' for k, v in sorted(labels.items())) + "}"
        url = f"http://127.0.0.1:{self.metrics_port}/metrics"
        with urllib.request.urlopen(url, timeout=5) as response:
            for line in response.read().decode().splitlines():
                key, _, value = line.rpartition(" ")
                if key == want:
                    return float(value)
        return 0.0

    def metrics_text(self):
        url = f"http://127.0.0.1:{self.metrics_port}/metrics"
        with urllib.request.urlopen(url, timeout=5) as response:
            return response.read().decode()

    def tls_channel(self, cert=None):
        credentials = grpc.ssl_channel_credentials(
            root_certificates=read("ca.pem"),
            private_key=read(f"{cert}.key") if cert else None,
            certificate_chain=read(f"{cert}.pem") if cert else None)
        return grpc.secure_channel(self.address, credentials,
                                   options=[("grpc.ssl_target_name_override", "localhost")])

    def kill(self):
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait(timeout=10)
        self.proc.stdout.close()
        self.proc.stderr.close()


def info(channel, metadata=None):
    return spqr_pb2_grpc.SpqrServiceStub(channel).GetModelInfo(
        pb.GetModelInfoRequest(), timeout=10, metadata=metadata)


def health_check(channel, metadata=None, service=""):
    return health_pb2_grpc.HealthStub(channel).Check(
        health_pb2.HealthCheckRequest(service=service), timeout=10, metadata=metadata).status


def list_services(channel, metadata=None):
    answers = list(reflection_pb2_grpc.ServerReflectionStub(channel).ServerReflectionInfo(
        iter([reflection_pb2.ServerReflectionRequest(list_services="")]), timeout=10,
        metadata=metadata))
    return [s.name for s in answers[0].list_services_response.service]


def greedy(max_new_tokens, text):
    return pb.GenerateRequest(text=text, sampling=pb.SamplingParams(temperature=0.0),
                              stopping=pb.Stopping(max_new_tokens=max_new_tokens,
                                                   ignore_eos=True))


class TlsTest(unittest.TestCase):

    def test_tls_server_refuses_plaintext_and_serves_tls(self):
        server = Server(["--server.tls.cert_file", os.path.join(CERTS, "server.pem"),
                         "--server.tls.key_file", os.path.join(CERTS, "server.key")])
        try:
            with grpc.insecure_channel(server.address) as plain:
                with self.assertRaises(grpc.RpcError) as error:
                    info(plain)
                self.assertEqual(error.exception.code(), grpc.StatusCode.UNAVAILABLE)
            with server.tls_channel() as channel:
                self.assertEqual(info(channel).limits.kv_block_size > 0, True)
                health = health_pb2_grpc.HealthStub(channel).Check(
                    health_pb2.HealthCheckRequest(), timeout=10)
                self.assertEqual(health.status, health_pb2.HealthCheckResponse.SERVING)
                responses = list(spqr_pb2_grpc.SpqrServiceStub(channel).Generate(
                    greedy(4, "over TLS"), timeout=60))
                self.assertEqual(responses[-1].usage.completion_tokens, 4)
        finally:
            server.kill()

    def test_mtls_requires_a_client_certificate_of_the_configured_ca(self):
        server = Server(["--server.tls.cert_file", os.path.join(CERTS, "server.pem"),
                         "--server.tls.key_file", os.path.join(CERTS, "server.key"),
                         "--server.tls.client_ca_file", os.path.join(CERTS, "ca.pem"),
                         "--server.tls.require_client_cert"])
        try:
            for cert in [None, "intruder"]:
                with server.tls_channel(cert) as channel:
                    with self.assertRaises(grpc.RpcError, msg=f"client cert {cert}") as error:
                        info(channel)
                    self.assertEqual(error.exception.code(), grpc.StatusCode.UNAVAILABLE)
            with server.tls_channel("client") as channel:
                self.assertGreater(info(channel).limits.kv_blocks_total, 0)
        finally:
            server.kill()

    def test_unreadable_certificate_fails_start_up_naming_it(self):
        server = Server(["--server.tls.cert_file", os.path.join(CERTS, "missing.pem"),
                         "--server.tls.key_file", os.path.join(CERTS, "server.key")],
                        expect_ready=False)
        try:
            self.assertEqual(server.proc.wait(timeout=WAIT_S), 1)
            time.sleep(0.2)  # let the stderr pump catch up
            self.assertIn("missing.pem", "\n".join(server.stderr))
            self.assertIn("server.tls.cert_file", "\n".join(server.stderr))
        finally:
            server.kill()

    def start_up_error(self, flags):
        """Runs a server that must fail start-up; returns its stderr."""
        server = Server(flags, expect_ready=False)
        try:
            self.assertEqual(server.proc.wait(timeout=WAIT_S), 1)
            time.sleep(0.2)  # let the stderr pump catch up
            return "\n".join(server.stderr)
        finally:
            server.kill()

    def test_key_of_another_certificate_fails_start_up_saying_it_does_not_match(self):
        # client.key is a valid key, but not the private key of server.pem.
        stderr = self.start_up_error([
            "--server.tls.cert_file", os.path.join(CERTS, "server.pem"),
            "--server.tls.key_file", os.path.join(CERTS, "client.key")])
        self.assertIn("does not match the certificate", stderr)
        self.assertIn("server.tls.key_file", stderr)
        self.assertIn("client.key", stderr)
        self.assertNotIn("cannot listen", stderr)

    def test_files_that_are_not_what_their_key_says_fail_start_up_naming_them(self):
        # A certificate where the key belongs, a key where the certificate belongs, a key as the
        # client CA: each is named with its config key.
        cases = [
            (["--server.tls.cert_file", os.path.join(CERTS, "server.pem"),
              "--server.tls.key_file", os.path.join(CERTS, "server.pem")],
             "server.tls.key_file", "no PEM private key"),
            (["--server.tls.cert_file", os.path.join(CERTS, "server.key"),
              "--server.tls.key_file", os.path.join(CERTS, "server.key")],
             "server.tls.cert_file", "no PEM certificate"),
            (["--server.tls.cert_file", os.path.join(CERTS, "server.pem"),
              "--server.tls.key_file", os.path.join(CERTS, "server.key"),
              "--server.tls.client_ca_file", os.path.join(CERTS, "ca.key")],
             "server.tls.client_ca_file", "no PEM certificate"),
            (["--server.tls.cert_file", os.path.join(CERTS, "server.pem"),
              "--server.tls.key_file", os.path.join(CERTS, "missing.key")],
             "server.tls.key_file", "cannot open"),
        ]
        for flags, key, problem in cases:
            with self.subTest(key=key, problem=problem):
                stderr = self.start_up_error(flags)
                self.assertIn(key, stderr)
                self.assertIn(problem, stderr)


class ApiKeyTest(unittest.TestCase):

    def test_keys_from_file_and_environment(self):
        key_file = write_key_file("keys.txt", "# operators\nfile-key-123\n\n")
        server = Server(["--server.auth.api_keys_file", key_file,
                         "--server.auth.api_keys_env", "SPQR_TEST_API_KEYS"],
                        env={"SPQR_TEST_API_KEYS": "env-key-1, env-key-2"})
        try:
            with grpc.insecure_channel(server.address) as channel:
                for metadata, reason in [(None, "missing"),
                                         ([("authorization", "Bearer file-key-12")], "invalid"),
                                         ([("authorization", "file-key-123")], "invalid")]:
                    with self.assertRaises(grpc.RpcError) as error:
                        info(channel, metadata)
                    self.assertEqual(error.exception.code(), grpc.StatusCode.UNAUTHENTICATED)
                    self.assertIn("API key", error.exception.details())
                self.assertEqual(server.metric("spqr_unauthenticated_requests_total",
                                               {"method": "GetModelInfo", "reason": "missing"}), 1)
                self.assertEqual(server.metric("spqr_unauthenticated_requests_total",
                                               {"method": "GetModelInfo", "reason": "invalid"}), 2)
                for key in ["file-key-123", "env-key-1", "env-key-2"]:
                    self.assertGreater(
                        info(channel, [("authorization", f"Bearer {key}")]).limits.kv_blocks_total,
                        0)
                stub = spqr_pb2_grpc.SpqrServiceStub(channel)
                with self.assertRaises(grpc.RpcError) as error:
                    list(stub.Generate(greedy(4, "no key"), timeout=60))
                self.assertEqual(error.exception.code(), grpc.StatusCode.UNAUTHENTICATED)
                responses = list(stub.Generate(greedy(4, "key"), timeout=60,
                                               metadata=[("authorization", "bearer env-key-2")]))
                self.assertEqual(responses[-1].usage.completion_tokens, 4)
                # By default health and reflection stay open (load balancers, Kubernetes probes
                # and tools call them without metadata), and nothing is counted for them.
                self.assertEqual(health_check(channel), health_pb2.HealthCheckResponse.SERVING)
                self.assertIn("spqr.v1.SpqrService", list_services(channel))
                metrics = server.metrics_text()
                self.assertNotIn('spqr_unauthenticated_requests_total{method="Health.Check"',
                                 metrics)
                self.assertNotIn(
                    'spqr_unauthenticated_requests_total{method="ServerReflectionInfo"', metrics)
        finally:
            server.kill()

    def test_health_and_reflection_need_a_key_when_not_exempt(self):
        key_file = write_key_file("strict-keys.txt", "strict-key\n")
        server = Server(["--server.auth.api_keys_file", key_file,
                         "--server.auth.exempt_health=false",
                         "--server.auth.exempt_reflection=false"])
        key = [("authorization", "Bearer strict-key")]
        wrong = [("authorization", "Bearer strict-kez")]
        SERVING = health_pb2.HealthCheckResponse.SERVING
        NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING
        try:
            # Refusals are exported at 0 from the start.
            self.assertIn('spqr_unauthenticated_requests_total{method="Health.Check",'
                          'reason="missing"} 0', server.metrics_text())
            with grpc.insecure_channel(server.address) as channel:
                for metadata in [None, wrong]:
                    with self.assertRaises(grpc.RpcError) as error:
                        health_check(channel, metadata)
                    self.assertEqual(error.exception.code(), grpc.StatusCode.UNAUTHENTICATED)
                    with self.assertRaises(grpc.RpcError) as error:
                        list_services(channel, metadata)
                    self.assertEqual(error.exception.code(), grpc.StatusCode.UNAUTHENTICATED)
                with self.assertRaises(grpc.RpcError) as error:
                    next(health_pb2_grpc.HealthStub(channel).Watch(
                        health_pb2.HealthCheckRequest(), timeout=10))
                self.assertEqual(error.exception.code(), grpc.StatusCode.UNAUTHENTICATED)
                counted = {(method, reason): server.metric(
                               "spqr_unauthenticated_requests_total",
                               {"method": method, "reason": reason})
                           for method in ["Health.Check", "Health.Watch", "ServerReflectionInfo"]
                           for reason in ["missing", "invalid"]}
                self.assertEqual(counted, {("Health.Check", "missing"): 1,
                                           ("Health.Check", "invalid"): 1,
                                           ("Health.Watch", "missing"): 1,
                                           ("Health.Watch", "invalid"): 0,
                                           ("ServerReflectionInfo", "missing"): 1,
                                           ("ServerReflectionInfo", "invalid"): 1})
                # With the key both answer.
                self.assertEqual(health_check(channel, key), SERVING)
                self.assertEqual(health_check(channel, key, "spqr.v1.SpqrService"), SERVING)
                self.assertEqual(set(list_services(channel, key)),
                                 {"spqr.v1.SpqrService", "grpc.health.v1.Health",
                                  "grpc.reflection.v1alpha.ServerReflection"})
                if ARGS.client:  # the Docker HEALTHCHECK's command, with and without the key
                    env = {k: v for k, v in os.environ.items() if k != "SPQR_API_KEY"}
                    health_cmd = [ARGS.client, "--address", server.address, "health"]
                    refused = subprocess.run(health_cmd, capture_output=True, text=True,
                                             timeout=30, env=env)
                    self.assertEqual(refused.returncode, 1)
                    self.assertIn("API key", refused.stderr)
                    served = subprocess.run(health_cmd, capture_output=True, text=True,
                                            timeout=30, env={**env, "SPQR_API_KEY": "strict-key"})
                    self.assertEqual(served.returncode, 0, served.stderr)
                    self.assertEqual(served.stdout.strip(), "SERVING")
                # A Watch stream with the key sees SERVING, then NOT_SERVING on SIGTERM, then
                # ends (UNAVAILABLE) without holding up the shutdown.
                watch = health_pb2_grpc.HealthStub(channel).Watch(
                    health_pb2.HealthCheckRequest(), timeout=60, metadata=key)
                self.assertEqual(next(watch).status, SERVING)
                server.proc.send_signal(signal.SIGTERM)
                self.assertEqual(next(watch).status, NOT_SERVING)
                with self.assertRaises(grpc.RpcError) as error:
                    next(watch)
                self.assertEqual(error.exception.code(), grpc.StatusCode.UNAVAILABLE)
                self.assertEqual(server.proc.wait(timeout=15), 0)
        finally:
            server.kill()

    def test_abort_only_cancels_requests_made_with_the_same_key(self):
        key_file = write_key_file("abort-keys.txt", "owner-key\nother-key\n")
        server = Server(["--server.auth.api_keys_file", key_file])
        owner = [("authorization", "Bearer owner-key")]
        other = [("authorization", "Bearer other-key")]
        try:
            with grpc.insecure_channel(server.address) as channel:
                stub = spqr_pb2_grpc.SpqrServiceStub(channel)
                # Background streams make every step slower, so the target should not finish
                # before the three Abort calls. On a loaded machine the client can still be
                # descheduled that long: when the owner's Abort finds nothing, the target must
                # have finished by length (then the other key's "not found" proved nothing), and
                # the scenario is tried again. The owner finding it proves the request was alive
                # during the other key's earlier call.
                for attempt in range(3):
                    background = [stub.Generate(greedy(LONG, f"background {i}"), timeout=120,
                                                metadata=owner) for i in range(12)]
                    for call in background:
                        next(call)
                    call = stub.Generate(greedy(LONG, "target"), timeout=120, metadata=owner)
                    request_id = dict(call.initial_metadata())["spqr-request-id"]
                    self.assertFalse(stub.Abort(pb.AbortRequest(request_id=request_id),
                                                timeout=10, metadata=other).found)
                    with self.assertRaises(grpc.RpcError) as error:
                        stub.Abort(pb.AbortRequest(request_id=request_id), timeout=10)
                    self.assertEqual(error.exception.code(), grpc.StatusCode.UNAUTHENTICATED)
                    found = stub.Abort(pb.AbortRequest(request_id=request_id), timeout=10,
                                       metadata=owner).found
                    last = list(call)[-1].finish_reason
                    for c in background:
                        c.cancel()
                    if found:
                        self.assertEqual(last, pb.FINISH_REASON_CANCELLED)
                        break
                    self.assertEqual(last, pb.FINISH_REASON_LENGTH)
                else:
                    self.fail("the target finished before the owner's Abort in 3 attempts")
        finally:
            server.kill()

    def test_unset_key_variable_fails_start_up_naming_it(self):
        env = dict(os.environ)
        env.pop("SPQR_TEST_UNSET_KEYS", None)
        result = subprocess.run([ARGS.server, "--model", ARGS.model, "--listen", "127.0.0.1:0",
                                 "--metrics_port", "0", "--server.auth.api_keys_env",
                                 "SPQR_TEST_UNSET_KEYS"], capture_output=True, text=True,
                                timeout=WAIT_S, env=env)
        self.assertEqual(result.returncode, 1, result.stderr)
        self.assertIn("SPQR_TEST_UNSET_KEYS", result.stderr)


class ClientBinaryTest(unittest.TestCase):

    def test_client_speaks_mtls_and_sends_the_api_key(self):
        if not ARGS.client:
            self.skipTest("no --client")
        key_file = write_key_file("client-keys.txt", "client-binary-key\n")
        server = Server(["--server.tls.cert_file", os.path.join(CERTS, "server.pem"),
                         "--server.tls.key_file", os.path.join(CERTS, "server.key"),
                         "--server.tls.client_ca_file", os.path.join(CERTS, "ca.pem"),
                         "--server.tls.require_client_cert",
                         "--server.auth.api_keys_file", key_file])
        try:
            tls = ["--address", server.address, "--timeout", "30",
                   "--ca-cert", os.path.join(CERTS, "ca.pem"), "--tls-server-name", "localhost",
                   "--client-cert", os.path.join(CERTS, "client.pem"),
                   "--client-key", os.path.join(CERTS, "client.key")]
            env = {k: v for k, v in os.environ.items() if k != "SPQR_API_KEY"}

            def client(*args, extra_env=None):
                return subprocess.run([ARGS.client, *args], capture_output=True, text=True,
                                      timeout=60, env={**env, **(extra_env or {})})
            result = client(*tls, "info")
            self.assertEqual(result.returncode, 1)
            self.assertIn("API key", result.stderr)
            result = client(*tls, "--api-key", "client-binary-key", "info")
            self.assertEqual(result.returncode, 0, result.stderr)
            result = client(*tls, "generate", "hi", "--max-new-tokens", "3",
                            extra_env={"SPQR_API_KEY": "client-binary-key"})
            self.assertEqual(result.returncode, 0, result.stderr)
            # Plaintext against the TLS port fails.
            result = client("--address", server.address, "--timeout", "10",
                            "--api-key", "client-binary-key", "info")
            self.assertEqual(result.returncode, 1)
        finally:
            server.kill()


class StreamLimitTest(unittest.TestCase):

    def test_one_connection_holds_at_most_max_concurrent_streams(self):
        server = Server(["--server.max_concurrent_streams", "2"])
        try:
            with grpc.insecure_channel(server.address) as channel:
                stub = spqr_pb2_grpc.SpqrServiceStub(channel)
                calls = [stub.Generate(greedy(LONG, f"stream {i}"), timeout=120)
                         for i in range(6)]
                peak = 0
                url = f"http://127.0.0.1:{server.metrics_port}/metrics"
                results = []
                collector = threading.Thread(
                    target=lambda: results.extend(list(c)[-1] for c in calls), daemon=True)
                collector.start()
                while collector.is_alive():
                    with urllib.request.urlopen(url, timeout=5) as response:
                        text = response.read().decode()
                    inflight = float(re.search(r"^spqr_inflight_rpcs (\S+)$", text, re.M)[1])
                    peak = max(peak, inflight)
                    time.sleep(0.01)
                collector.join()
            # Every stream ran to the end, never more than two at once.
            self.assertEqual([r.finish_reason for r in results], [pb.FINISH_REASON_LENGTH] * 6)
            self.assertEqual(peak, 2)
        finally:
            server.kill()


if __name__ == "__main__":
    ARGS, rest = parse_args()
    sys.path.insert(0, ARGS.stubs)
    import grpc  # noqa: E402
    import health_pb2  # noqa: E402
    import health_pb2_grpc  # noqa: E402
    import reflection_pb2  # noqa: E402
    import reflection_pb2_grpc  # noqa: E402
    from spqr.v1 import spqr_pb2 as pb  # noqa: E402
    from spqr.v1 import spqr_pb2_grpc  # noqa: E402
    unittest.main(argv=[sys.argv[0], *rest], verbosity=2)
