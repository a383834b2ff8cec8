"""Helpers of the deploy_* and python_client_* integration tests: run the real spqr-server binary
on 127.0.0.1 with ephemeral ports, and always stop it.

The server prints "listening on HOST:PORT", "metrics on HOST:PORT" and "ready" on stdout
(server/server_app.cc); its log goes to stderr, which is kept in a file and shown on failure.
"""

import os
import queue
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time

SKIP_RETURN_CODE = 77  # ctest SKIP_RETURN_CODE of these tests


def skip(reason):
    print(f"SKIP: {reason}")
    sys.exit(SKIP_RETURN_CODE)


def free_port():
    """A port that was free a moment ago on 127.0.0.1 (for programs that cannot bind port 0)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class SpqrServer:
    """spqr-server serving `model` with the reference config, gRPC and metrics on free ports."""

    def __init__(self, binary, model, config, extra_args=()):
        self.command = [binary, "--config", config, "--model", model, "--listen", "127.0.0.1:0",
                        "--metrics.address=127.0.0.1", "--metrics_port", "0", "--threads", "2",
                        *extra_args]
        self.address = None
        self.metrics_address = None
        self.process = None
        self._lines = queue.Queue()
        self._stderr = tempfile.TemporaryFile(mode="w+")

    def __enter__(self):
        self.start()
        return self

    def __exit__(self, *exc):
        self.stop()

    def start(self, timeout=120.0):
        self.process = subprocess.Popen(self.command, stdout=subprocess.PIPE, stderr=self._stderr,
                                        text=True)
        threading.Thread(target=self._read_stdout, daemon=True).start()
        end = time.monotonic() + timeout
        ready = False
        while not ready:
            remaining = end - time.monotonic()
            if remaining <= 0:
                self.stop()
                raise TimeoutError(f"spqr-server not ready after {timeout} s\n{self.log()}")
            try:
                line = self._lines.get(timeout=min(remaining, 0.5))
            except queue.Empty:
                if self.process.poll() is not None:
                    raise RuntimeError(f"spqr-server exited with {self.process.returncode} "
                                       f"before it was ready\n{self.log()}")
                continue
            if line is None:
                continue
            if line.startswith("listening on "):
                self.address = line[len("listening on "):]
            elif line.startswith("metrics on "):
                self.metrics_address = line[len("metrics on "):]
            elif line == "ready":
                ready = True
        if self.address is None or self.metrics_address is None:
            self.stop()
            raise RuntimeError(f"spqr-server did not announce its ports\n{self.log()}")

    def stop(self, timeout=30.0):
        """SIGTERM (the server drains and exits), SIGKILL if it is still there after `timeout`."""
        if self.process is None or self.process.poll() is not None:
            return
        self.process.send_signal(signal.SIGTERM)
        try:
            self.process.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()

    def log(self):
        self._stderr.flush()
        self._stderr.seek(0)
        return "---- spqr-server stderr ----\n" + self._stderr.read()

    def _read_stdout(self):
        for line in self.process.stdout:
            self._lines.put(line.strip())
        self._lines.put(None)


def require_file(path, what):
    if not os.path.exists(path):
        raise FileNotFoundError(f"{what} not found at {path}")
