#!/usr/bin/python3
"""Load generator for spqr-server: throughput and latency at several concurrencies.

Starts the real spqr-server on loopback with ephemeral ports (or uses --address), then for each
concurrency C runs C concurrent client streams for a bounded time; each stream issues Generate
requests back to back (fixed prompts, greedy, ignore_eos, fixed max_new_tokens) and records when
every response arrives. Per concurrency it reports:
  - aggregate generated tokens/s (tokens received / wall time of the level, tail included),
  - time to first token (TTFT) p50/p99 (client-measured: call start -> first response with tokens),
  - inter-token latency (ITL) p50/p99: a response carrying n tokens that arrived d seconds after
    the previous one counts n observations of d / n (the server's spqr_inter_token_latency_seconds
    rule),
  - time per output token (TPOT) p50/p99: per request, (last token time - first token time) /
    (tokens - 1), which client-side read batching cannot shrink the way it can single gaps,
and throughput(16) / throughput(1), plus the server's and this client's CPU seconds per level
(the client shares the machine's cores with the server). The raw numbers, machine information, git commit and load
averages go to bench/results/loadgen_<model>_<date>.json; a table is printed.

Bounded: every level stops issuing requests after --duration seconds or --max-requests requests;
requests in flight then finish (each is bounded by --max-new-tokens). Loopback only.

Usage (from the repository root, after building spqr-server and spqr_proto_python):
  /usr/bin/python3 bench/loadgen.py --server build/server/spqr-server \
      --stubs build/python_stubs --model tests/data/test-model
"""
import argparse
import asyncio
import datetime
import json
import os
import platform
import queue
import re
import subprocess
import sys
import threading
import time
import urllib.request

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PROMPTS = [
    "Once upon a time there was a little",
    "The quick brown fox jumps over the lazy dog and",
    "In the beginning the universe was created. This has",
    "A long time ago in a galaxy far, far away,",
    "It was the best of times, it was the worst of times,",
    "Call me Ishmael. Some years ago, never mind how long",
    "All happy families are alike; each unhappy family",
    "It is a truth universally acknowledged, that a single man",
]


def parse_args():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--server", default=os.path.join(REPO, "build/server/spqr-server"),
                        help="spqr-server binary to start (ignored with --address)")
    parser.add_argument("--address", default="",
                        help="HOST:PORT of a running server instead of starting one")
    parser.add_argument("--model", default=os.path.join(REPO, "tests/data/test-model"))
    parser.add_argument("--stubs", default=os.path.join(REPO, "build/python_stubs"),
                        help="folder of the generated Python stubs (target spqr_proto_python)")
    parser.add_argument("--concurrency", default="1,4,16,64",
                        help="comma-separated numbers of concurrent streams")
    parser.add_argument("--duration", type=float, default=10.0,
                        help="seconds each level issues new requests")
    parser.add_argument("--max-requests", type=int, default=2000,
                        help="at most this many requests per level")
    parser.add_argument("--max-new-tokens", type=int, default=64)
    parser.add_argument("--warmup-requests", type=int, default=2,
                        help="requests before the first level (not measured)")
    parser.add_argument("--server-arg", action="append", default=[],
                        help="extra flag for spqr-server, e.g. --server-arg=--threads=2")
    parser.add_argument("--out", default="",
                        help="result file (default bench/results/loadgen_<model>_<date>.json)")
    parser.add_argument("--start-timeout", type=float, default=120.0)
    return parser.parse_args()


def percentile(values, q):
    """Linear-interpolated percentile (numpy's default) of a list; None when empty."""
    if not values:
        return None
    ordered = sorted(values)
    pos = (len(ordered) - 1) * q / 100.0
    lo = int(pos)
    hi = min(lo + 1, len(ordered) - 1)
    return ordered[lo] + (ordered[hi] - ordered[lo]) * (pos - lo)


class Server:
    """A spqr-server child on 127.0.0.1 with ephemeral ports."""

    def __init__(self, args):
        self.cmd = [args.server, "--model", args.model, "--listen", "127.0.0.1:0",
                    "--metrics.address", "127.0.0.1", "--metrics_port", "0", *args.server_arg]
        self.proc = subprocess.Popen(self.cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                     text=True)
        self.lines = queue.Queue()
        self.stderr_tail = []
        threading.Thread(target=self._pump, args=(self.proc.stdout, self.lines.put),
                         daemon=True).start()
        threading.Thread(target=self._pump, args=(self.proc.stderr, self._keep_stderr),
                         daemon=True).start()
        deadline = time.monotonic() + args.start_timeout
        self.port = int(self._wait(r"^listening on 127\.0\.0\.1:(\d+)$", deadline).group(1))
        self.metrics_port = int(self._wait(r"^metrics on 127\.0\.0\.1:(\d+)$", deadline).group(1))
        self._wait(r"^ready$", deadline)
        self.address = f"127.0.0.1:{self.port}"

    def _keep_stderr(self, line):
        self.stderr_tail = (self.stderr_tail + [line])[-20:]

    @staticmethod
    def _pump(stream, sink):
        for line in stream:
            sink(line.rstrip("\n"))

    def _wait(self, pattern, deadline):
        while time.monotonic() < deadline:
            try:
                line = self.lines.get(timeout=0.2)
            except queue.Empty:
                if self.proc.poll() is not None:
                    break
                continue
            match = re.match(pattern, line)
            if match:
                return match
        self.stop()
        raise SystemExit(f"spqr-server did not print /{pattern}/; stderr:\n" +
                         "\n".join(self.stderr_tail))

    def metrics(self):
        """{sample name with labels: value} of the metrics endpoint."""
        url = f"http://127.0.0.1:{self.metrics_port}/metrics"
        with urllib.request.urlopen(url, timeout=10) as response:
            text = response.read().decode()
        samples = {}
        for line in text.splitlines():
            if line and not line.startswith("#"):
                key, _, value = line.rpartition(" ")
                samples[key] = float(value)
        return samples

    def cpu_seconds(self):
        """User + system CPU seconds of the server process so far."""
        with open(f"/proc/{self.proc.pid}/stat") as f:
            fields = f.read().rpartition(")")[2].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")

    def stop(self):
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=10)


async def run_level(stub, pb, concurrency, args):
    """Runs one concurrency level; returns its raw measurements."""
    start = time.monotonic()
    stop_at = start + args.duration
    issued = 0
    ttfts, itls, tpots, errors = [], [], [], {}
    tokens = 0
    completed = 0

    async def stream_loop(index):
        nonlocal issued, tokens, completed
        k = 0
        while time.monotonic() < stop_at and issued < args.max_requests:
            issued += 1
            prompt = PROMPTS[(index + k) % len(PROMPTS)]
            k += 1
            request = pb.GenerateRequest(
                text=prompt, sampling=pb.SamplingParams(temperature=0.0),
                stopping=pb.Stopping(max_new_tokens=args.max_new_tokens, ignore_eos=True),
                response=pb.ResponseOptions(return_token_ids=True))
            t0 = time.monotonic()
            first = last = None
            got = 0
            try:
                async for response in stub.Generate(request, timeout=300):
                    now = time.monotonic()
                    n = len(response.token_ids)
                    if n == 0:
                        continue
                    if last is None:
                        ttfts.append(now - t0)
                        first = now
                        first_tokens = n
                    else:
                        itls.extend([(now - last) / n] * n)
                    last = now
                    got += n
                completed += 1
                if got > first_tokens:
                    tpots.append((last - first) / (got - first_tokens))
            except Exception as error:  # grpc.aio.AioRpcError; counted, the level goes on
                code = getattr(error, "code", lambda: type(error).__name__)()
                errors[str(code)] = errors.get(str(code), 0) + 1
            tokens += got

    await asyncio.gather(*(stream_loop(i) for i in range(concurrency)))
    wall = time.monotonic() - start
    return {
        "concurrency": concurrency,
        "requests_issued": issued,
        "requests_completed": completed,
        "errors": errors,
        "generated_tokens": tokens,
        "wall_seconds": wall,
        "tokens_per_second": tokens / wall if wall > 0 else 0.0,
        "ttft_seconds": {"p50": percentile(ttfts, 50), "p99": percentile(ttfts, 99),
                         "count": len(ttfts)},
        "itl_seconds": {"p50": percentile(itls, 50), "p99": percentile(itls, 99),
                        "count": len(itls)},
        "tpot_seconds": {"p50": percentile(tpots, 50), "p99": percentile(tpots, 99),
                         "count": len(tpots)},
    }


def machine_info():
    info = {"hostname": platform.node(), "platform": platform.platform(),
            "cpu_count": os.cpu_count(), "python": platform.python_version()}
    try:
        with open("/proc/cpuinfo") as f:
            models = re.findall(r"^model name\s*:\s*(.*)$", f.read(), re.M)
        info["cpu_model"] = models[0] if models else ""
        with open("/proc/meminfo") as f:
            info["mem_total_kib"] = int(re.search(r"MemTotal:\s+(\d+)", f.read()).group(1))
    except OSError:
        pass
    return info


def git_info():
    def git(*cmd):
        result = subprocess.run(["git", "-C", REPO, *cmd], capture_output=True, text=True)
        return result.stdout.strip() if result.returncode == 0 else ""
    # Dirty only if tracked files the measured binary is built from differ from the commit.
    dirty = git("status", "--porcelain", "--untracked-files=no", "--", "engine", "server",
                "config", "proto")
    return {"commit": git("rev-parse", "HEAD"), "dirty_sources": bool(dirty)}


async def run_all(args, address, pb, pb_grpc, grpc_aio, server):
    levels = [int(c) for c in args.concurrency.split(",") if c.strip()]
    results = []
    # One channel per 16 streams: a single HTTP/2 connection would serialize the client side.
    channels = [grpc_aio.insecure_channel(address) for _ in range(max(1, max(levels) // 16))]
    stubs = [pb_grpc.SpqrServiceStub(c) for c in channels]
    for i in range(args.warmup_requests):
        request = pb.GenerateRequest(text=PROMPTS[i % len(PROMPTS)],
                                     stopping=pb.Stopping(max_new_tokens=args.max_new_tokens,
                                                          ignore_eos=True))
        await stubs[0].GenerateUnary(request, timeout=300)

    class Spread:
        """Round-robins calls over the channels."""
        def __init__(self):
            self.i = 0

        def Generate(self, request, timeout):
            self.i += 1
            return stubs[self.i % len(stubs)].Generate(request, timeout=timeout)

    for c in levels:
        before = server.metrics() if server else {}
        load_before = os.getloadavg()
        server_cpu = server.cpu_seconds() if server else None
        client_cpu = time.process_time()
        level = await run_level(Spread(), pb, c, args)
        level["client_cpu_seconds"] = time.process_time() - client_cpu
        if server:
            level["server_cpu_seconds"] = server.cpu_seconds() - server_cpu
        level["load_average_before"] = list(load_before)
        level["load_average_after"] = list(os.getloadavg())
        if server:
            after = server.metrics()
            level["server_deltas"] = {
                name: after.get(name, 0.0) - before.get(name, 0.0)
                for name in ["spqr_generation_tokens_total", "spqr_prompt_tokens_total",
                             "spqr_engine_steps_total", "spqr_num_preemptions_total",
                             "spqr_prefix_cache_queries_total", "spqr_prefix_cache_hits_total"]}
        results.append(level)
        print(f"  concurrency {c}: {level['tokens_per_second']:.1f} tokens/s "
              f"({level['requests_completed']} requests)", file=sys.stderr, flush=True)
    for channel in channels:
        await channel.close()
    return results


def fmt_ms(seconds):
    return "-" if seconds is None else f"{seconds * 1000:.1f}"


def main():
    args = parse_args()
    sys.path.insert(0, args.stubs)
    import grpc.aio as grpc_aio  # noqa: E402
    from spqr.v1 import spqr_pb2 as pb  # noqa: E402
    from spqr.v1 import spqr_pb2_grpc as pb_grpc  # noqa: E402

    server = None if args.address else Server(args)
    address = args.address or server.address
    started = datetime.datetime.now(datetime.timezone.utc)
    try:
        levels = asyncio.run(run_all(args, address, pb, pb_grpc, grpc_aio, server))
    finally:
        if server:
            server.stop()
    by_c = {level["concurrency"]: level["tokens_per_second"] for level in levels}
    scaling = by_c[16] / by_c[1] if by_c.get(1) and 16 in by_c else None
    model_name = os.path.basename(os.path.normpath(args.model))
    report = {
        "benchmark": "loadgen",
        "started_utc": started.isoformat(timespec="seconds"),
        "model": model_name,
        "model_dir": os.path.abspath(args.model),
        "server_command": server.cmd if server else None,
        "address": address if args.address else "127.0.0.1 (ephemeral port)",
        "command": [sys.executable, *sys.argv],
        "parameters": {"concurrency": args.concurrency, "duration_seconds": args.duration,
                       "max_requests_per_level": args.max_requests,
                       "max_new_tokens": args.max_new_tokens, "prompts": PROMPTS,
                       "sampling": "greedy, ignore_eos", "warmup_requests": args.warmup_requests},
        "machine": machine_info(),
        "git": git_info(),
        "load_average_start": levels[0]["load_average_before"] if levels else None,
        "levels": levels,
        "throughput_ratio_16_over_1": scaling,
    }
    out = args.out or os.path.join(
        REPO, "bench", "results", f"loadgen_{model_name}_{started.strftime('%Y-%m-%d')}.json")
    os.makedirs(os.path.dirname(out), exist_ok=True)
    with open(out, "w") as f:
        json.dump(report, f, indent=2)
        f.write("\n")

    print(f"model {model_name}, max_new_tokens {args.max_new_tokens}, {args.duration:g} s per "
          f"level, load average at start {report['load_average_start']}")
    print(f"{'conc':>4} {'tokens/s':>9} {'requests':>8} {'errors':>6} {'TTFT p50':>9} "
          f"{'TTFT p99':>9} {'ITL p50':>8} {'ITL p99':>8} {'TPOT p50':>9} {'TPOT p99':>9} "
          f"{'load':>5}   (times in ms)")
    for level in levels:
        print(f"{level['concurrency']:>4} {level['tokens_per_second']:>9.1f} "
              f"{level['requests_completed']:>8} {sum(level['errors'].values()):>6} "
              f"{fmt_ms(level['ttft_seconds']['p50']):>9} {fmt_ms(level['ttft_seconds']['p99']):>9} "
              f"{fmt_ms(level['itl_seconds']['p50']):>8} {fmt_ms(level['itl_seconds']['p99']):>8} "
              f"{fmt_ms(level['tpot_seconds']['p50']):>9} "
              f"{fmt_ms(level['tpot_seconds']['p99']):>9} "
              f"{level['load_average_after'][0]:>5.1f}")
    if scaling is not None:
        print(f"throughput(16) / throughput(1) = {scaling:.2f}")
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
