#!/usr/bin/env python3
"""deploy_*: static checks of the deployment files (no server, no cluster, no Docker engine).

usage: deploy_static_checks.py --root REPO CHECK
  promtool-config   promtool check config deploy/prometheus/prometheus.yml (and its rule files)
  promtool-rules    promtool check rules deploy/prometheus/alerts.yml
  promtool-test     promtool test rules deploy/prometheus/alerts_test.yml (alerts fire / stay quiet)
  yaml              every YAML file under deploy/ parses (yaml.safe_load_all); k8s objects are
                    well-formed (apiVersion, kind, metadata.name)
  k8s               the manifests agree with each other and with the server's config: probes on
                    the gRPC port, GPU request, grace period >= preStop + drain, config keys known,
                    ports, labels, volumes, HPA metric served by the adapter rules
  compose           deploy/compose.yaml: services, mounted folders exist, ports and stop grace
                    period agree with the server config, Prometheus scrapes the metrics port
  dashboard         the Grafana dashboard is valid JSON and every query parses as PromQL
  metric-names      every spqr_* / vllm:* metric used under deploy/ is in server/metrics.cc's table
  dockerfile        Dockerfile and .dockerignore structure (stages, scripts, user, ports, health)
  quantize-flags    every flag the quantize Job passes is one `spqr-quantize --helpfull` lists
                    (needs --binary)
Exit 0: pass; 1: fail; 77: skipped (promtool missing).
"""

import argparse
import glob
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile

import yaml

SKIP = 77
ROOT = None


def path(*parts):
    return os.path.join(ROOT, *parts)


def fail(message):
    print(f"FAIL: {message}")
    sys.exit(1)


def check(condition, message):
    if not condition:
        fail(message)


def promtool(*args):
    binary = shutil.which("promtool")
    if binary is None:
        print("SKIP: promtool not found (Debian package 'prometheus', installed by "
              "tools/install-deps.sh)")
        sys.exit(SKIP)
    result = subprocess.run([binary, *args], capture_output=True, text=True, timeout=120)
    print(result.stdout + result.stderr)
    check(result.returncode == 0, f"promtool {' '.join(args)} exited {result.returncode}")


def load_yaml_documents(file):
    with open(file) as f:
        return [doc for doc in yaml.safe_load_all(f) if doc is not None]


def k8s_objects():
    objects = {}
    for file in sorted(glob.glob(path("deploy", "k8s", "*.yaml"))):
        for doc in load_yaml_documents(file):
            if doc.get("kind") == "Kustomization":
                continue
            objects[(doc["kind"], doc["metadata"]["name"])] = doc
    return objects


def flatten_keys(tree, prefix=""):
    keys = {}
    for key, value in tree.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            keys.update(flatten_keys(value, name + "."))
        else:
            keys[name] = value
    return keys


def metric_table():
    """{name: kind} from server/metrics.cc's kMetricTable."""
    with open(path("server", "metrics.cc")) as f:
        source = f.read()
    table = dict(re.findall(r'\{"([a-zA-Z_:][a-zA-Z0-9_:]*)",\s*MetricKind::k(\w+)', source))
    check(len(table) >= 10, f"found only {len(table)} metrics in server/metrics.cc")
    return table


def known_series(table):
    names = set()
    for name, kind in table.items():
        names.add(name)
        if kind == "Histogram":
            names.update({name + "_bucket", name + "_sum", name + "_count"})
    return names


# A metric name, not a part of a recording rule's level:metric:operation name.
METRIC_RE = re.compile(r"(?<![\w:])(spqr_[a-z0-9_]+|vllm:[a-z_]+)")


def dashboard_expressions(dashboard):
    exprs = []
    for panel in dashboard["panels"]:
        for target in panel.get("targets", []):
            exprs.append((panel["title"], target["expr"]))
    return exprs


# ---- checks ----------------------------------------------------------------------------------

def check_yaml():
    files = sorted(glob.glob(path("deploy", "**", "*.yaml"), recursive=True) +
                   glob.glob(path("deploy", "**", "*.yml"), recursive=True))
    check(len(files) >= 10, f"expected the deploy/ YAML files, found {files}")
    for file in files:
        try:
            docs = load_yaml_documents(file)
        except yaml.YAMLError as error:
            fail(f"{file}: {error}")
        check(docs, f"{file}: no YAML document")
        if os.sep + "k8s" + os.sep in file:
            for doc in docs:
                for field in ("apiVersion", "kind"):
                    check(field in doc, f"{file}: a document without {field}")
                if doc["kind"] != "Kustomization":
                    check(doc.get("metadata", {}).get("name"), f"{file}: {doc['kind']} without name")
        print(f"ok  {os.path.relpath(file, ROOT)} ({len(docs)} document(s))")
    # YAML embedded in ConfigMaps parses too.
    for (kind, name), obj in k8s_objects().items():
        if kind == "ConfigMap":
            for key, text in obj.get("data", {}).items():
                if key.endswith((".yaml", ".yml")):
                    try:
                        yaml.safe_load(text)
                    except yaml.YAMLError as error:
                        fail(f"ConfigMap {name} key {key}: {error}")
                    print(f"ok  ConfigMap {name}/{key}")
    kustomization = load_yaml_documents(path("deploy", "k8s", "kustomization.yaml"))[0]
    listed = set(kustomization["resources"])
    present = {os.path.basename(f) for f in glob.glob(path("deploy", "k8s", "*.yaml"))}
    check(listed == present - {"kustomization.yaml"},
          f"kustomization.yaml resources {sorted(listed)} != files {sorted(present)}")


def check_k8s():
    objects = k8s_objects()
    deployment = objects[("Deployment", "spqr-server")]
    pod = deployment["spec"]["template"]["spec"]
    container = pod["containers"][0]
    ports = {p["name"]: p["containerPort"] for p in container["ports"]}

    config_map = objects[("ConfigMap", "spqr-server-config")]
    server_config = yaml.safe_load(config_map["data"]["spqr-server.yaml"])
    keys = flatten_keys(server_config)
    with open(path("config", "spqr-server.yaml")) as f:
        reference = flatten_keys(yaml.safe_load(f))
    unknown = sorted(set(keys) - set(reference))
    check(not unknown, f"ConfigMap spqr-server.yaml has keys the server does not know: {unknown}")
    check(keys["server.listen"].rsplit(":", 1)[1] == str(ports["grpc"]),
          f"server.listen {keys['server.listen']} vs container port grpc {ports['grpc']}")
    check(keys["server.listen"].startswith("0.0.0.0:"), "server.listen must accept pod traffic")
    check(keys["metrics.port"] == ports["metrics"], "metrics.port vs container port metrics")
    check(keys["metrics.address"] == "0.0.0.0", "metrics.address must accept scrapes")

    # The ConfigMap is what the server reads.
    mounts = {m["name"]: m["mountPath"] for m in container["volumeMounts"]}
    volumes = {v["name"]: v for v in pod["volumes"]}
    config_arg = container["args"][container["args"].index("--config") + 1]
    check(volumes["config"]["configMap"]["name"] == "spqr-server-config", "config volume")
    check(config_arg == os.path.join(mounts["config"], "spqr-server.yaml"),
          f"--config {config_arg} is not the mounted ConfigMap")
    check(keys["model.dir"].startswith(mounts["models"] + "/"),
          f"model.dir {keys['model.dir']} is not under the models mount {mounts['models']}")

    # GPU, probes, drain.
    for section in ("requests", "limits"):
        check(container["resources"][section].get("nvidia.com/gpu") == 1,
              f"resources.{section} must ask for nvidia.com/gpu: 1")
    for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
        check(container[probe]["grpc"]["port"] == ports["grpc"],
              f"{probe} must use the gRPC health service on port {ports['grpc']}")
    pre_stop = container["lifecycle"]["preStop"]["exec"]["command"]
    check(pre_stop[0] == "sleep", f"preStop {pre_stop}")
    pre_stop_seconds = float(pre_stop[1])
    drain = float(keys["server.drain_timeout_seconds"])
    # server_app.cc: after the drain timeout, 5 s for cancelled calls + 2 s shutdown deadline.
    needed = pre_stop_seconds + drain + 5 + 2
    grace = pod["terminationGracePeriodSeconds"]
    check(grace >= needed, f"terminationGracePeriodSeconds {grace} < preStop {pre_stop_seconds} + "
                           f"drain {drain} + 7 s = {needed}")
    check(grace <= needed + 30, f"terminationGracePeriodSeconds {grace} is far above {needed}")
    liveness = container["livenessProbe"]
    check(liveness["periodSeconds"] * liveness["failureThreshold"] > drain,
          "liveness must tolerate NOT_SERVING for longer than a drain")
    check(pod["securityContext"]["runAsNonRoot"] is True, "pods must run as non-root")

    # Labels, Service, PodMonitor, volumes.
    labels = deployment["spec"]["template"]["metadata"]["labels"]
    selector = deployment["spec"]["selector"]["matchLabels"]
    check(all(labels.get(k) == v for k, v in selector.items()), "Deployment selector vs labels")
    service = objects[("Service", "spqr-server")]
    check(all(labels.get(k) == v for k, v in service["spec"]["selector"].items()),
          "Service selector does not match the pods")
    for port in service["spec"]["ports"]:
        check(port["targetPort"] in ports, f"Service targetPort {port['targetPort']}")
    monitor = objects[("PodMonitor", "spqr-server")]
    check(all(labels.get(k) == v for k, v in monitor["spec"]["selector"]["matchLabels"].items()),
          "PodMonitor selector does not match the pods")
    check(monitor["spec"]["podMetricsEndpoints"][0]["port"] == "metrics", "PodMonitor port")
    job = objects[("Job", "spqr-quantize")]
    job_pod = job["spec"]["template"]["spec"]
    claim = volumes["models"]["persistentVolumeClaim"]["claimName"]
    check(("PersistentVolumeClaim", claim) in objects, f"no PVC {claim}")
    check(job_pod["volumes"][0]["persistentVolumeClaim"]["claimName"] == claim,
          "the quantize Job must write the volume the server reads")
    check(keys["model.dir"] in job_pod["containers"][0]["args"][0],
          "the quantize Job must write model.dir of the server config")

    # HPA metric is served by the adapter rules.
    hpa = objects[("HorizontalPodAutoscaler", "spqr-server")]
    check(hpa["spec"]["scaleTargetRef"]["name"] == "spqr-server", "HPA target")
    metric = hpa["spec"]["metrics"][0]["pods"]["metric"]["name"]
    adapter = yaml.safe_load(objects[("ConfigMap", "prometheus-adapter-spqr")]["data"]["config.yaml"])
    served = {rule["name"]["as"] for rule in adapter["rules"]}
    check(metric in served, f"HPA metric {metric} is not served by the adapter rules {served}")
    print(f"ok  {len(objects)} Kubernetes objects agree (grace {grace} s >= {needed} s)")


def check_compose():
    compose = load_yaml_documents(path("deploy", "compose.yaml"))[0]
    services = compose["services"]
    check(set(services) == {"spqr-server", "prometheus", "grafana"}, f"services {set(services)}")
    with open(path("config", "spqr-server.yaml")) as f:
        reference = flatten_keys(yaml.safe_load(f))
    grpc_port = int(reference["server.listen"].rsplit(":", 1)[1])
    metrics_port = int(reference["metrics.port"])
    server = services["spqr-server"]
    check(server["build"]["dockerfile"] == "Dockerfile" and
          os.path.exists(path("deploy", server["build"]["context"], "Dockerfile")),
          "spqr-server must build the repository's Dockerfile")
    published = {int(p.split(":")[1]) for p in server["ports"]}
    check(published == {grpc_port, metrics_port}, f"spqr-server ports {published}")
    grace = int(server["stop_grace_period"].rstrip("s"))
    drain = float(reference["server.drain_timeout_seconds"])
    check(grace >= drain + 7, f"stop_grace_period {grace}s < drain {drain} s + 7 s")
    for name in ("prometheus", "grafana"):
        for volume in services[name]["volumes"]:
            source = volume.split(":")[0]
            if source.startswith("."):
                check(os.path.isdir(path("deploy", source)), f"{name} mounts missing {source}")
    prometheus = load_yaml_documents(path("deploy", "prometheus", "prometheus.yml"))[0]
    targets = [t for job in prometheus["scrape_configs"] if job["job_name"] == "spqr-server"
               for sc in job["static_configs"] for t in sc["targets"]]
    check(targets == [f"spqr-server:{metrics_port}"], f"Prometheus scrape targets {targets}")
    datasource = load_yaml_documents(
        path("deploy", "grafana", "provisioning", "datasources", "prometheus.yaml"))[0]
    check(datasource["datasources"][0]["url"].endswith(":9090"), "Grafana data source URL")
    print(f"ok  compose: 3 services, ports {sorted(published)}, stop grace {grace} s")


def check_dashboard():
    files = glob.glob(path("deploy", "grafana", "dashboards", "*.json"))
    check(files, "no dashboard JSON")
    for file in files:
        with open(file) as f:
            try:
                dashboard = json.load(f)
            except json.JSONDecodeError as error:
                fail(f"{file}: {error}")
        check(dashboard.get("uid") and dashboard.get("title"), f"{file}: uid/title")
        ids = [p["id"] for p in dashboard["panels"]]
        check(len(ids) == len(set(ids)), f"{file}: duplicate panel ids")
        exprs = dashboard_expressions(dashboard)
        check(len(exprs) >= 10, f"{file}: only {len(exprs)} queries")
        # promtool parses PromQL in rule files: substitute Grafana's variables and check them as
        # recording rules.
        rules = {"groups": [{"name": "dashboard", "rules": [
            {"record": f"dashboard:query_{i}", "expr": expr
             .replace("$__rate_interval", "5m").replace("$instance", ".*")}
            for i, (_, expr) in enumerate(exprs)]}]}
        with tempfile.NamedTemporaryFile("w", suffix=".yml", delete=False) as tmp:
            yaml.safe_dump(rules, tmp)
        try:
            promtool("check", "rules", tmp.name)
        finally:
            os.unlink(tmp.name)
        print(f"ok  {os.path.relpath(file, ROOT)}: {len(exprs)} queries parse")


def check_metric_names():
    table = metric_table()
    known = known_series(table)
    files = (glob.glob(path("deploy", "prometheus", "alerts.yml")) +
             glob.glob(path("deploy", "grafana", "dashboards", "*.json")) +
             [path("deploy", "k8s", "hpa.yaml"),
              path("deploy", "k8s", "prometheus-adapter-rules.yaml")])
    used = {}
    for file in files:
        with open(file) as f:
            for name in METRIC_RE.findall(f.read()):
                used.setdefault(name, set()).add(os.path.relpath(file, ROOT))
    unknown = {name: sorted(where) for name, where in used.items() if name not in known}
    check(not unknown, f"metrics not in server/metrics.cc: {unknown}")
    check(len(used) >= 15, f"only {len(used)} metric names found: {sorted(used)}")
    unused = sorted(name for name in table if not any(
        u == name or u.startswith(name + "_") for u in used))
    print(f"ok  {len(used)} metric names used under deploy/ are all in server/metrics.cc")
    if unused:
        print(f"note: not used by any panel or rule: {unused}")


def check_dockerfile():
    with open(path("Dockerfile")) as f:
        text = f.read()
    # Join continuation lines, drop comments.
    lines = [line for line in text.replace("\\\n", " ").splitlines()
             if line.strip() and not line.lstrip().startswith("#")]
    instructions = [(line.split()[0].upper(), line.split(None, 1)[1] if " " in line else "")
                    for line in lines]
    froms = [args for op, args in instructions if op == "FROM"]
    check(len(froms) == 2, f"expected a builder and a runtime stage, got FROM {froms}")
    check("devel" in froms[0] and " AS builder" in froms[0], f"builder stage: {froms[0]}")
    check("runtime" in froms[1], f"runtime stage: {froms[1]}")
    runs = " ".join(args for op, args in instructions if op == "RUN")
    check("tools/install-deps.sh" in runs and "tools/build.sh" in runs,
          "the builder must run the project's install-deps.sh and build.sh")
    check("-DSPQR_NATIVE=OFF" in runs, "the image must build portable code (SPQR_NATIVE=OFF)")
    for script in ("tools/install-deps.sh", "tools/build.sh"):
        check(os.path.exists(path(script)), f"{script} missing")
    users = [args for op, args in instructions if op == "USER"]
    check(users and not users[-1].startswith(("root", "0")), f"USER {users}")
    with open(path("config", "spqr-server.yaml")) as f:
        reference = flatten_keys(yaml.safe_load(f))
    expose = {int(p) for op, args in instructions if op == "EXPOSE" for p in args.split()}
    expected = {int(reference["server.listen"].rsplit(":", 1)[1]), int(reference["metrics.port"])}
    check(expose == expected, f"EXPOSE {expose} != the config's default ports {expected}")
    health = [args for op, args in instructions if op == "HEALTHCHECK"]
    check(health and "spqr-client" in health[0] and "health" in health[0], f"HEALTHCHECK {health}")
    for binary in ("spqr-server", "spqr-client", "spqr-quantize", "spqr-eval"):
        check(binary in runs, f"the image must stage {binary} when built")
    check(re.search(r"add_executable\(spqr-server\b", open(path("server", "CMakeLists.txt")).read()),
          "server/CMakeLists.txt builds no spqr-server")
    with open(path(".dockerignore")) as f:
        ignored = {line.strip() for line in f if line.strip() and not line.startswith("#")}
    for entry in (".git", "build", "build-*"):
        check(entry in ignored, f".dockerignore must exclude {entry}")
    print("ok  Dockerfile: 2 stages, project scripts, non-root, ports "
          f"{sorted(expose)}, gRPC health check")


def check_quantize_flags(binary):
    result = subprocess.run([binary, "--helpfull"], capture_output=True, text=True, timeout=60)
    known = set(re.findall(r"--([a-z_][a-z0-9_]*)", result.stdout + result.stderr))
    check({"model", "out", "calibration"} <= known,
          f"{binary} --helpfull lists no --model/--out/--calibration: {sorted(known)[:20]}")
    job = k8s_objects()[("Job", "spqr-quantize")]
    script = job["spec"]["template"]["spec"]["containers"][0]["args"][0]
    command = script[script.index("spqr-quantize"):]
    used = re.findall(r"(?<![\w-])--([a-z_][a-z0-9_]*)", command)
    check(len(used) >= 5, f"found only {used} in the Job's spqr-quantize command")
    unknown = sorted(set(used) - known)
    check(not unknown, f"the quantize Job passes flags spqr-quantize does not know: {unknown}")
    print(f"ok  the Job's {len(used)} spqr-quantize flags are all known: {used}")


def main():
    global ROOT
    parser = argparse.ArgumentParser()
    parser.add_argument("--root", required=True)
    parser.add_argument("--binary", help="spqr-quantize, for quantize-flags")
    parser.add_argument("check", choices=["promtool-config", "promtool-rules", "promtool-test",
                                          "yaml", "k8s", "compose", "dashboard", "metric-names",
                                          "dockerfile", "quantize-flags"])
    args = parser.parse_args()
    ROOT = os.path.abspath(args.root)
    prometheus_dir = path("deploy", "prometheus")
    if args.check == "promtool-config":
        promtool("check", "config", os.path.join(prometheus_dir, "prometheus.yml"))
    elif args.check == "promtool-rules":
        promtool("check", "rules", os.path.join(prometheus_dir, "alerts.yml"))
    elif args.check == "promtool-test":
        promtool("test", "rules", os.path.join(prometheus_dir, "alerts_test.yml"))
    elif args.check == "yaml":
        check_yaml()
    elif args.check == "k8s":
        check_k8s()
    elif args.check == "compose":
        check_compose()
    elif args.check == "dashboard":
        check_dashboard()
    elif args.check == "metric-names":
        check_metric_names()
    elif args.check == "quantize-flags":
        check_quantize_flags(args.binary)
    else:
        check_dockerfile()
    print(f"deploy {args.check}: OK")


if __name__ == "__main__":
    main()
