#!/usr/bin/env python3
"""deploy_prometheus_scrape: a real Prometheus server scrapes a real spqr-server, both on loopback.

Starts spqr-server on the test model (ephemeral ports), starts Debian's prometheus with a temporary
config that scrapes it every second and loads deploy/prometheus/alerts.yml, sends Generate requests
with the Python client, then asks Prometheus's HTTP API (/api/v1/query) for the time-to-first-token
histogram and the KV cache usage gauge, and checks that every committed rule evaluates without error
on the live series. Skips (exit 77) only when the prometheus binary is missing.

usage: deploy_prometheus_scrape_test.py --server BIN --model DIR --config YAML --stubs DIR
                                        --client-dir DIR --alerts FILE
"""

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
import urllib.parse
import urllib.request

from deploy_testlib import SpqrServer, free_port, skip

SCRAPE_JOB = "spqr-server"  # the job label alerts.yml matches


def http_get_json(url, timeout=5.0):
    with urllib.request.urlopen(url, timeout=timeout) as response:
        return json.loads(response.read().decode())


def query(base, promql):
    url = f"{base}/api/v1/query?" + urllib.parse.urlencode({"query": promql})
    body = http_get_json(url)
    if body.get("status") != "success":
        raise AssertionError(f"query {promql!r} failed: {body}")
    return body["data"]["result"]


def wait_for(what, predicate, timeout, interval=0.5):
    """Calls predicate() until it returns a truthy value; raises after `timeout` seconds."""
    end = time.monotonic() + timeout
    last_error = None
    while time.monotonic() < end:
        try:
            value = predicate()
            if value:
                return value
        except (OSError, ValueError, AssertionError) as error:  # not up yet, or not scraped yet
            last_error = error
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout} s waiting for {what} (last error: {last_error})")


def start_prometheus(binary, workdir, target, alerts):
    port = free_port()
    config = os.path.join(workdir, "prometheus.yml")
    with open(config, "w") as f:
        f.write(f"""global:
  scrape_interval: 1s
  scrape_timeout: 1s
  evaluation_interval: 1s
rule_files:
  - {json.dumps(os.path.abspath(alerts))}
scrape_configs:
  - job_name: {SCRAPE_JOB}
    static_configs:
      - targets: ["{target}"]
""")
    log = open(os.path.join(workdir, "prometheus.log"), "w+")
    process = subprocess.Popen(
        [binary, f"--config.file={config}", f"--storage.tsdb.path={workdir}/data",
         f"--web.listen-address=127.0.0.1:{port}", "--log.level=warn"],
        stdout=log, stderr=subprocess.STDOUT, cwd=workdir)
    return process, f"http://127.0.0.1:{port}", log


def stop(process, timeout=15.0):
    if process.poll() is None:
        process.terminate()
        try:
            process.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def main():
    parser = argparse.ArgumentParser()
    for flag in ("--server", "--model", "--config", "--stubs", "--client-dir", "--alerts"):
        parser.add_argument(flag, required=True)
    args = parser.parse_args()

    prometheus = shutil.which("prometheus") or (
        "/usr/bin/prometheus" if os.path.exists("/usr/bin/prometheus") else None)
    if prometheus is None:
        skip("no prometheus binary (Debian package 'prometheus', installed by "
             "tools/install-deps.sh); the scrape test needs a real Prometheus server")

    sys.path.insert(0, args.client_dir)
    import spqr_client

    workdir = tempfile.mkdtemp(prefix="spqr-prometheus-")
    server = SpqrServer(args.server, args.model, args.config)
    prom = None
    prom_log = None
    try:
        server.start(timeout=120)
        print(f"spqr-server: gRPC {server.address}, metrics {server.metrics_address}")
        prom, base, prom_log = start_prometheus(prometheus, workdir, server.metrics_address,
                                                args.alerts)
        wait_for("Prometheus /-/ready",
                 lambda: urllib.request.urlopen(f"{base}/-/ready", timeout=2).status == 200, 30)
        wait_for("the first successful scrape",
                 lambda: [r for r in query(base, f'up{{job="{SCRAPE_JOB}"}}')
                          if r["value"][1] == "1"], 30)

        requests = 3
        with spqr_client.Client(server.address, stubs_dir=args.stubs, timeout=60) as client:
            for i in range(requests):
                chunks = list(client.generate_stream(f"Request number {i} says", max_new_tokens=8,
                                                     temperature=0.0, ignore_eos=True))
                assert chunks[-1].usage.completion_tokens == 8, chunks[-1]

        # The TTFT histogram: every bucket series, and a count that reached our requests.
        ttft_count = wait_for(
            "spqr_time_to_first_token_seconds_count >= requests",
            lambda: [r for r in query(base, "spqr_time_to_first_token_seconds_count")
                     if float(r["value"][1]) >= requests], 30)
        print("ttft count:", ttft_count)
        buckets = query(base, "spqr_time_to_first_token_seconds_bucket")
        bounds = {r["metric"]["le"] for r in buckets}
        assert "+Inf" in bounds and len(bounds) >= 10, f"histogram buckets: {sorted(bounds)}"
        for r in buckets:
            assert r["metric"]["job"] == SCRAPE_JOB, r
        p50 = query(base, "histogram_quantile(0.5, sum by (le) "
                          "(rate(spqr_time_to_first_token_seconds_bucket[1m])))")
        print("ttft p50 over 1m:", p50)
        assert p50 and float(p50[0]["value"][1]) > 0, p50

        # The KV usage gauge: present, a fraction, and the vLLM-named twin agrees.
        kv = query(base, "spqr_kv_cache_usage_ratio")
        assert len(kv) == 1, kv
        usage = float(kv[0]["value"][1])
        assert 0.0 <= usage <= 1.0, usage
        print("kv usage:", usage)
        vllm_kv = query(base, '{__name__="vllm:kv_cache_usage_perc"}')
        assert len(vllm_kv) == 1 and float(vllm_kv[0]["value"][1]) == usage, vllm_kv
        blocks = query(base, "spqr_kv_cache_blocks")
        assert {r["metric"]["state"] for r in blocks} == {"used", "free"}, blocks
        assert query(base, 'spqr_model_ready == 1'), "spqr_model_ready is not 1"

        # Every committed recording/alerting rule evaluated on the live series without error.
        def rules_evaluated():
            groups = http_get_json(f"{base}/api/v1/rules")["data"]["groups"]
            rules = [rule for group in groups for rule in group["rules"]]
            if not rules or any(rule.get("lastEvaluation", "").startswith("0001") for rule in rules):
                return None
            return rules
        rules = wait_for("every rule of alerts.yml evaluated", rules_evaluated, 30)
        bad = [(r["name"], r.get("health"), r.get("lastError")) for r in rules
               if r.get("health") != "ok"]
        assert not bad, f"rules with errors: {bad}"
        print(f"{len(rules)} rules of {os.path.basename(args.alerts)} evaluate without error")
        print("deploy_prometheus_scrape: OK")
    except BaseException:
        if prom_log is not None:
            prom_log.flush()
            prom_log.seek(0)
            print("---- prometheus log ----\n" + prom_log.read(), file=sys.stderr)
        print(server.log(), file=sys.stderr)
        raise
    finally:
        if prom is not None:
            stop(prom)
        server.stop()
        shutil.rmtree(workdir, ignore_errors=True)


if __name__ == "__main__":
    main()
