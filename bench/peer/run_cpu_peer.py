#!/usr/bin/python3
"""CPU peer benchmark: our engine against llama.cpp on the same machine, in one interleaved run.

One command prepares the models (if missing), measures the machine's memory read bandwidth, then
runs --repeats rounds; each round runs every row's two engines one after the other (A B A B ...),
with /proc/loadavg recorded before each run, because the machine is shared and only ratios from one
run travel. Raw results go to one JSON file; bench/peer/make_peer_table.py makes the Markdown table
of docs/cpu-performance.md from it (method: docs/cpu-performance.md, issue 11). Both engines run
with the same OMP_WAIT_POLICY (default passive, see omp_env).

Rows (ours / llama.cpp):
  synth dense      our bf16 synthetic model         / llama.cpp F16 GGUF of it
  synth 4-bit      SpQR w4 16/16 tau 0.2 of it      / Q4_K_M (embeddings and output kept f16)
  synth 3-bit      SpQR w3 16/16 tau 0.2 of it      / Q3_K_M (embeddings and output kept f16)
  reference dense  models/reference (bf16, 11 MB)   / llama.cpp F16 GGUF of it (1-stream decode)
The synthetic model is LLaMA-shaped with hidden 2048, intermediate 5632, 4 layers, vocab 4096, so
the linear layers are 96 % of the bytes read per token and decode measures the matmul kernels.

Per run, ours: spqr-bench-cpu --prompts 512 --decode-context 128 --decode-steps 128 (prefill 512
and decode of 128 tokens after a 128-token context, best of --inner-repeats). llama.cpp:
llama-bench -p 512 -n 0 -r --inner-repeats (prefill 512) and llama-batched-bench -npp 128 -ntg 128
-npl 1 (decode of 128 tokens after 128). Bytes per token: ours from the bench JSON (weights read
per token: all linear layers, lm_head and norms, not the embedding table); llama.cpp the same set
from the GGUF's tensor sizes (all tensors but token_embd).

Without --llama-cpp only our side runs. With it, llama.cpp is built in DIR/build (nice'd, -j2) if
its tools are missing, and the GGUFs are made with DIR/convert_hf_to_gguf.py under Debian's
/usr/bin/python3 (python3-torch, python3-tqdm; bench/peer/sitecustomize.py shims torch 1.13).
Nothing of llama.cpp belongs in this repository.

Usage (from the repository root):
  /usr/bin/python3 bench/peer/run_cpu_peer.py --build build --models-dir ~/bench-models \\
      [--llama-cpp ~/llama.cpp] [--threads 2] [--repeats 3] [--inner-repeats 3] [--label TEXT]
      [--rows dense,w4,w3,reference] [--out bench/results/cpu-peer/DATE.json]
"""

import argparse
import datetime
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
PEER_DIR = os.path.join(REPO, "bench", "peer")
DEBIAN_PYTHON = "/usr/bin/python3"

SYNTH_ARGS = ["--hidden", "2048", "--intermediate", "5632", "--layers", "4", "--vocab", "4096",
              "--heads", "16", "--kv-heads", "4", "--max-pos", "2048"]
SPQR_COMMON = ["--method", "spqr", "--beta1", "16", "--beta2", "16", "--stats_bits", "3",
               "--nsamples", "16", "--seqlen", "512", "--seed", "0"]
PREFILL_TOKENS = 512
DECODE_CONTEXT = 128
DECODE_STEPS = 128
ROWS = ["dense", "w4", "w3", "reference", "w4-inf", "w3-inf"]
LLAMA_TARGETS = ["llama-bench", "llama-quantize", "llama-batched-bench", "llama-perplexity"]


def log(msg):
    print(f"[{datetime.datetime.utcnow():%H:%M:%S}] {msg}", file=sys.stderr, flush=True)


def loadavg():
    with open("/proc/loadavg") as f:
        return f.read().strip()


def cpu_model():
    with open("/proc/cpuinfo") as f:
        for line in f:
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return "unknown"


def cpu_flags():
    with open("/proc/cpuinfo") as f:
        for line in f:
            if line.startswith("flags"):
                flags = line.split(":", 1)[1].split()
                return sorted(x for x in flags if x.startswith(("avx", "fma", "f16c", "amx")))
    return []


def git(cwd, *args):
    try:
        return subprocess.run(["git", "-C", cwd, *args], capture_output=True, text=True,
                              check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return None


def run(cmd, env=None, cwd=None, timeout=3600):
    """Runs cmd, returns (stdout, stderr, seconds); exits with its output on failure."""
    t0 = time.monotonic()
    p = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=cwd, timeout=timeout)
    secs = time.monotonic() - t0
    if p.returncode != 0:
        sys.stderr.write(p.stdout[-4000:] + p.stderr[-4000:])
        sys.exit(f"error: exit {p.returncode}: {' '.join(cmd)}")
    return p.stdout, p.stderr, secs


# ---------------------------------------------------------------------------------------------
# Preparation: models, llama.cpp build, bandwidth probe
# ---------------------------------------------------------------------------------------------


def ensure_synth(models_dir):
    out = os.path.join(models_dir, "synth")
    if not os.path.exists(os.path.join(out, "model.safetensors")):
        log(f"making the synthetic model in {out}")
        run([DEBIAN_PYTHON, os.path.join(REPO, "tools", "make_test_model.py"), "--out", out,
             *SYNTH_ARGS])
    return out


def ensure_spqr(build, models_dir, synth, wbits, tau, threads):
    name = f"synth-spqr-w{wbits}-16x16-tau{tau}"
    out = os.path.join(models_dir, name)
    if not os.path.exists(os.path.join(out, "config.json")):
        log(f"quantizing {name}")
        run([os.path.join(build, "quantizer", "spqr-quantize"), "--model", synth, "--out", out,
             "--calibration", os.path.join(REPO, "models", "reference", "calibration.txt"),
             "--wbits", str(wbits), "--tau", str(tau), "--threads", str(threads), "--force",
             *SPQR_COMMON], timeout=4 * 3600)
    return out


def ensure_llama_build(llama):
    bindir = os.path.join(llama, "build", "bin")
    if all(os.path.exists(os.path.join(bindir, t)) for t in LLAMA_TARGETS):
        return bindir
    log(f"building llama.cpp in {llama}/build (nice -n 10, -j2)")
    run(["nice", "-n", "10", "cmake", "-S", llama, "-B", os.path.join(llama, "build"), "-G",
         "Ninja", "-DCMAKE_BUILD_TYPE=Release", "-DGGML_NATIVE=ON", "-DLLAMA_CURL=OFF",
         "-DLLAMA_BUILD_TESTS=OFF"])
    run(["nice", "-n", "10", "cmake", "--build", os.path.join(llama, "build"), "-j2", "--target",
         *LLAMA_TARGETS], timeout=4 * 3600)
    return bindir


def ensure_gguf(llama, bindir, hf_dir, out_f16, qtypes):
    """Converts hf_dir to out_f16 (F16), then quantizes the linear layers to each of qtypes."""
    if not os.path.exists(out_f16):
        log(f"converting {hf_dir} to {out_f16}")
        env = dict(os.environ)
        env["PYTHONPATH"] = os.pathsep.join([PEER_DIR, os.path.join(llama, "gguf-py")])
        tmp = out_f16 + ".tmp"
        run([DEBIAN_PYTHON, os.path.join(llama, "convert_hf_to_gguf.py"), hf_dir, "--outtype",
             "f16", "--no-lazy", "--outfile", tmp], env=env)
        os.replace(tmp, out_f16)
    paths = {"F16": out_f16}
    for q in qtypes:
        path = out_f16.replace("-F16.gguf", f"-{q}.gguf")
        if not os.path.exists(path):
            log(f"quantizing {path}")
            run([os.path.join(bindir, "llama-quantize"), "--token-embedding-type", "f16",
                 "--output-tensor-type", "f16", out_f16, path + ".tmp", q])
            os.replace(path + ".tmp", path)
        paths[q] = path
    return paths


def gguf_bytes(llama, path):
    """Bytes of the GGUF's tensors read per token (all but token_embd) and of the whole file."""
    sys.path.insert(0, os.path.join(llama, "gguf-py"))
    from gguf import GGUFReader  # pylint: disable=import-outside-toplevel
    reader = GGUFReader(path)
    per_token = sum(int(t.n_bytes) for t in reader.tensors if t.name != "token_embd.weight")
    embed = sum(int(t.n_bytes) for t in reader.tensors if t.name == "token_embd.weight")
    return {"bytes_per_token": per_token, "embedding_bytes": embed,
            "file_bytes": os.path.getsize(path),
            "tensor_types": sorted({t.tensor_type.name for t in reader.tensors})}


def measure_bandwidth(exe, threads):
    threads_list = "1" if threads == 1 else f"1,{threads}"
    out, _, _ = run([exe, "--gib", "1", "--threads", threads_list, "--repeats", "5"])
    return json.loads(out)


def build_membw(tmpdir):
    exe = os.path.join(tmpdir, "membw")
    run(["g++", "-O3", "-march=native", "-fopenmp", "-o", exe,
         os.path.join(PEER_DIR, "membw.cc")])
    return exe


# ---------------------------------------------------------------------------------------------
# One run of each engine
# ---------------------------------------------------------------------------------------------


def omp_env(policy):
    """The environment of every benchmark run: both engines use OpenMP (llama.cpp's ggml-cpu is
    built with it), so both get the same OMP_WAIT_POLICY. On a shared, oversubscribed machine the
    default (spinning) policy measures the scheduler, not the kernels: measured here on
    models/reference, llama.cpp decode ran at 17.6 tok/s spinning and 364 tok/s passive."""
    env = dict(os.environ)
    if policy != "inherit":
        env["OMP_WAIT_POLICY"] = policy
    return env


def env_prefix(env):
    return f"OMP_WAIT_POLICY={env['OMP_WAIT_POLICY']} " if "OMP_WAIT_POLICY" in env else ""


def run_ours(build, model, threads, inner, prompts, env):
    cmd = [os.path.join(build, "bench", "spqr-bench-cpu"), "--model", model, "--threads",
           str(threads), "--repeats", str(inner), "--prompts", str(prompts), "--decode-context",
           str(DECODE_CONTEXT), "--decode-steps", str(DECODE_STEPS)]
    out, _, secs = run(cmd, env=env)
    j = json.loads(out)
    prefill = {p["prompt_tokens"]: p["tokens_per_second"] for p in j["prefill"]}
    return {"command": env_prefix(env) + " ".join(cmd), "wall_seconds": secs,
            "prefill_tokens": prompts, "prefill_tok_s": prefill.get(prompts),
            "decode_tok_s": j["decode"]["tokens_per_second"], "raw": j}


def run_llama_prefill(bindir, gguf, threads, inner, env):
    cmd = [os.path.join(bindir, "llama-bench"), "-m", gguf, "-p", str(PREFILL_TOKENS), "-n", "0",
           "-t", str(threads), "-r", str(inner), "-o", "json"]
    out, _, secs = run(cmd, env=env)
    j = json.loads(out)
    row = next(r for r in j if r["n_prompt"] == PREFILL_TOKENS and r["n_gen"] == 0)
    return {"command": env_prefix(env) + " ".join(cmd), "wall_seconds": secs,
            "prefill_tokens": PREFILL_TOKENS,
            "prefill_tok_s": max(row["samples_ts"]), "raw": j}


def run_llama_decode(bindir, gguf, threads, ctx, env):
    cmd = [os.path.join(bindir, "llama-batched-bench"), "-m", gguf, "-c", str(ctx), "-b", "512",
           "-ub", "512", "-npp", str(DECODE_CONTEXT), "-ntg", str(DECODE_STEPS), "-npl", "1",
           "-t", str(threads), "--output-format", "jsonl"]
    out, err, secs = run(cmd, env=env)
    rows = [json.loads(line) for line in (out + "\n" + err).splitlines()
            if line.startswith("{") and '"speed_tg"' in line]
    if len(rows) != 1:
        sys.exit(f"error: expected one jsonl result from {' '.join(cmd)}, got {len(rows)}")
    return {"command": env_prefix(env) + " ".join(cmd), "wall_seconds": secs,
            "decode_tok_s": rows[0]["speed_tg"],
            "raw": rows[0]}


# ---------------------------------------------------------------------------------------------


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--build", default="build", help="our CMake build directory")
    ap.add_argument("--models-dir", required=True,
                    help="where the synthetic model, its SpQR versions and GGUFs are (made if "
                    "missing); outside the repository")
    ap.add_argument("--llama-cpp", help="llama.cpp checkout (built in DIR/build if needed)")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--repeats", type=int, default=3, help="interleaved rounds")
    ap.add_argument("--inner-repeats", type=int, default=3,
                    help="repeats inside each run (spqr-bench-cpu --repeats, llama-bench -r)")
    ap.add_argument("--rows", default="dense,w4,w3,reference",
                    help=f"table rows to run, from {','.join(ROWS)} (w4-inf, w3-inf: our SpQR "
                    "16/16 without outliers, no llama.cpp peer)")
    ap.add_argument("--omp-wait-policy", default="passive",
                    help="OMP_WAIT_POLICY of both engines' runs ('inherit': leave it as it is)")
    ap.add_argument("--label", default="", help="free text stored in the JSON (e.g. preliminary)")
    ap.add_argument("--out", help="default bench/results/cpu-peer/<UTC date>[-label].json")
    args = ap.parse_args()

    build = os.path.abspath(args.build)
    for exe in ("bench/spqr-bench-cpu", "quantizer/spqr-quantize"):
        if not os.path.exists(os.path.join(build, exe)):
            sys.exit(f"error: {build}/{exe} missing (build the targets spqr-bench-cpu and "
                     "spqr-quantize)")
    models_dir = os.path.abspath(os.path.expanduser(args.models_dir))
    os.makedirs(models_dir, exist_ok=True)
    llama = os.path.abspath(os.path.expanduser(args.llama_cpp)) if args.llama_cpp else None
    started = datetime.datetime.utcnow()

    rows = args.rows.split(",")
    bad = sorted(set(rows) - set(ROWS))
    if bad:
        sys.exit(f"error: unknown --rows {bad}; known: {','.join(ROWS)}")
    synth = ensure_synth(models_dir) if set(rows) & {"dense", "w4", "w3", "w4-inf", "w3-inf"} \
        else None
    reference = os.path.join(REPO, "models", "reference")
    # models: key -> engine, table row, label, path, kind (synth|reference); in table order.
    models = {}

    def add(key, engine, row, label, path, kind="synth"):
        models[key] = {"engine": engine, "row": row, "label": label, "path": path, "kind": kind}
        if engine == "ours":  # the checkpoint's bytes, embeddings included (for reference)
            models[key]["file_bytes"] = sum(
                os.path.getsize(os.path.join(path, f)) for f in os.listdir(path)
                if f.endswith(".safetensors"))

    for r in rows:
        if r == "dense":
            add("ours-synth-bf16", "ours", "synth dense", "ours bf16", synth)
        elif r == "reference":
            add("ours-reference-bf16", "ours", "reference dense", "ours bf16", reference,
                "reference")
        else:
            wbits, tau = int(r[1]), "inf" if r.endswith("-inf") else "0.2"
            row = f"synth {wbits}-bit" + (" (no outliers)" if tau == "inf" else "")
            add(f"ours-synth-spqr-w{wbits}-tau{tau}", "ours", row,
                f"ours SpQR w{wbits} 16/16 tau {tau}",
                ensure_spqr(build, models_dir, synth, wbits, tau, args.threads))

    bindir = None
    if llama:
        bindir = ensure_llama_build(llama)
        peers = {"dense": "F16", "w4": "Q4_K_M", "w3": "Q3_K_M"}
        qtypes = [peers[r] for r in rows if r in ("w4", "w3")]
        if any(r in peers for r in rows):
            ggufs = ensure_gguf(llama, bindir, synth, os.path.join(models_dir, "synth-F16.gguf"),
                                qtypes)
            for r in rows:
                if r in peers:
                    row = {"dense": "synth dense", "w4": "synth 4-bit", "w3": "synth 3-bit"}[r]
                    add(f"llama-synth-{peers[r]}", "llama.cpp", row, f"llama.cpp {peers[r]}",
                        ggufs[peers[r]])
        if "reference" in rows:
            ref = ensure_gguf(llama, bindir, reference,
                              os.path.join(models_dir, "reference-F16.gguf"), [])["F16"]
            add("llama-reference-F16", "llama.cpp", "reference dense", "llama.cpp F16", ref,
                "reference")
        for m in models.values():
            if m["engine"] == "llama.cpp":
                m.update(gguf_bytes(llama, m["path"]))

    tmpdir = tempfile.mkdtemp(prefix="spqr-peer-")
    membw = build_membw(tmpdir)
    bandwidth = []

    def probe_bandwidth(when):
        la = loadavg()
        log(f"memory bandwidth ({when}), loadavg {la}")
        b = measure_bandwidth(membw, args.threads)
        b["loadavg_before"] = la
        b["when"] = when
        bandwidth.append(b)

    probe_bandwidth("start")
    # Run order inside a round: rows in table order, ours first then llama.cpp (A B A B ...).
    order = []
    for key, m in models.items():
        if m["engine"] == "ours":
            order.append(key)
            partner = [k for k, n in models.items() if n["engine"] == "llama.cpp" and
                       n["row"] == m["row"]]
            order += partner
    bench_env = omp_env(args.omp_wait_policy)
    runs = []
    for rnd in range(args.repeats):
        for key in order:
            m = models[key]
            if m["engine"] == "ours":
                steps = [("bench", lambda m=m: run_ours(
                    build, m["path"], args.threads, args.inner_repeats,
                    128 if m["kind"] == "reference" else PREFILL_TOKENS, bench_env))]
            else:
                ctx = 512 if m["kind"] == "reference" else 1024
                steps = [("decode", lambda m=m, ctx=ctx: run_llama_decode(
                    bindir, m["path"], args.threads, ctx, bench_env))]
                if m["kind"] != "reference":
                    steps.insert(0, ("prefill", lambda m=m: run_llama_prefill(
                        bindir, m["path"], args.threads, args.inner_repeats, bench_env)))
            for what, fn in steps:
                la = loadavg()
                log(f"round {rnd + 1}/{args.repeats} {key} {what} (loadavg {la})")
                r = fn()
                r.update({"round": rnd, "model": key, "what": what, "loadavg_before": la})
                runs.append(r)
                shown = {k: round(r[k], 2) for k in ("prefill_tok_s", "decode_tok_s")
                         if r.get(k) is not None}
                log(f"  -> {shown}")
            if m["engine"] == "ours" and "bytes_per_token" not in m:
                m["bytes_per_token"] = runs[-1]["raw"]["model"]["weight_bytes"]
                m["weight_bytes_source"] = "spqr-bench-cpu model.weight_bytes"
    probe_bandwidth("end")
    shutil.rmtree(tmpdir, ignore_errors=True)

    first_ours = next((r["raw"] for r in runs if models[r["model"]]["engine"] == "ours"), {})
    llama_info = None
    if llama:
        first_lb = next((r["raw"][0] for r in runs if r["what"] == "prefill"), {})
        llama_info = {"dir": llama, "git_commit": git(llama, "rev-parse", "HEAD"),
                      "build_commit": first_lb.get("build_commit"),
                      "build_number": first_lb.get("build_number"),
                      "cpu_info": first_lb.get("cpu_info"), "backends": first_lb.get("backends")}
    result = {
        "benchmark": "cpu_peer",
        "label": args.label,
        "started": f"{started:%Y-%m-%dT%H:%M:%SZ}",
        "finished": f"{datetime.datetime.utcnow():%Y-%m-%dT%H:%M:%SZ}",
        "command": " ".join([os.path.relpath(sys.argv[0], REPO)] + sys.argv[1:]),
        "method": {"threads": args.threads, "rounds": args.repeats,
                   "inner_repeats": args.inner_repeats, "prefill_tokens": PREFILL_TOKENS,
                   "decode_context": DECODE_CONTEXT, "decode_steps": DECODE_STEPS,
                   "reference_prefill_tokens_ours": 128,
                   "order": order,
                   "omp_wait_policy": bench_env.get("OMP_WAIT_POLICY", "(unset)")},
        "machine": {"cpu_model": cpu_model(), "nproc": os.cpu_count(), "cpu_flags": cpu_flags(),
                    "kernel": platform.release()},
        "ours": {"build": build, "git_commit": first_ours.get("git_commit"),
                 "git_dirty": first_ours.get("git_dirty"),
                 "script_commit": git(REPO, "rev-parse", "HEAD")},
        "llama_cpp": llama_info,
        "memory_bandwidth": bandwidth,
        "models": models,
        "runs": runs,
    }
    out = args.out
    if not out:
        suffix = f"-{args.label}" if args.label else ""
        out = os.path.join(REPO, "bench", "results", "cpu-peer", f"{started:%Y-%m-%d}{suffix}.json")
    os.makedirs(os.path.dirname(os.path.abspath(out)), exist_ok=True)
    with open(out, "w") as f:
        json.dump(result, f, indent=1, sort_keys=True)
        f.write("\n")
    log(f"wrote {out}")


if __name__ == "__main__":
    main()
