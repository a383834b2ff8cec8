#!/usr/bin/python3
"""Zero-shot multiple-choice check through the Score RPC (issue 16, item 5).

For every item of a multiple-choice set (JSON lines: "context", "choices", "label"; see
make_nextsentence_set.py) it sends one Score call with one (context, choice) pair per choice (the
lm-evaluation-harness loglikelihood contract, docs/api.md) and takes

  acc       argmax over choices of log P(choice | context) (PairScore.sum_logprob): lm-eval's acc;
  acc_norm  argmax of sum_logprob / len(choice in characters): lm-eval's acc_norm;
  acc_mi    argmax of sum_logprob - log P(choice | one prefix token): lm-eval's acc_mutual_info.
            The prefix is the model's bos (GetModelInfo bos_token_id), else its first eos id; the
            context-free score is a token_ids Score of the prefix plus exactly the continuation
            token ids the pair scored. --no-unconditional skips it.

Ties go to the lowest index. Each accuracy comes with a 95 % Wilson score interval. Configurations
are compared with the first (or --baseline) on the same items: exact McNemar test on the items only
one of them gets right, and a 95 % paired bootstrap interval (items resampled, 10,000 times, seed 0)
of the accuracy difference; plus how often the two predict the same choice.

Every answer is checked against the contract before it is used: one PairScore per pair, at least
one continuation token, a finite sum_logprob <= 0, one token_logprobs entry per continuation token
and their sum equal to sum_logprob (1e-4 relative). A violation stops the run with an error naming
the item and choice.

Each --run LABEL=MODEL_DIR starts its own spqr-server (127.0.0.1, ephemeral ports; CPU threads
--threads) and stops it after scoring; --address HOST:PORT --label LABEL scores against a server
that is already running instead. Writes one JSON file (--out): the set's sha256, every run's model
(ModelInfo quantization, model files' sha256), per-item log-probabilities, token counts and
decisions, the summaries and the comparisons. bench/zeroshot/make_zeroshot_table.py turns such files
into the table of docs/zeroshot.md.

Usage:
  /usr/bin/python3 bench/zeroshot/run_zeroshot.py --set bench/zeroshot/nextsentence-test.jsonl \\
      --run bf16=models/reference --run spqr-w4=models/reference-spqr-w4 \\
      --out bench/results/zeroshot/reference_DATE.json
"""

import argparse
import concurrent.futures
import datetime
import hashlib
import json
import math
import os
import queue
import re
import subprocess
import sys
import threading
import time

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(os.path.dirname(HERE))
sys.path.insert(0, HERE)
sys.path.insert(0, os.path.join(REPO, "clients", "python"))
import zeroshot_stats  # noqa: E402

START_TIMEOUT_S = 300
# (summary name, per-item key, per-item prediction key)
METRICS = (("acc", "correct", "pred"), ("acc_norm", "correct_norm", "pred_norm"),
           ("acc_mi", "correct_mi", "pred_mi"))


class ContractError(Exception):
    pass


def sha256_file(path):
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def git_commit():
    """HEAD, with "+uncommitted bench/zeroshot" when this tool's folder differs from it."""
    try:
        head = subprocess.run(["git", "-C", REPO, "rev-parse", "--short", "HEAD"],
                              capture_output=True, text=True, check=True).stdout.strip()
        dirty = subprocess.run(["git", "-C", REPO, "status", "--porcelain", "--", HERE],
                               capture_output=True, text=True, check=True).stdout.strip()
        return head + (" +uncommitted bench/zeroshot" if dirty else "")
    except (OSError, subprocess.CalledProcessError):
        return None


def load_set(path):
    items = []
    with open(path, encoding="utf-8") as f:
        for number, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                item = json.loads(line)
            except json.JSONDecodeError as error:
                sys.exit(f"error: {path}:{number}: not JSON: {error}")
            choices = item.get("choices")
            if (not isinstance(item.get("context"), str) or not isinstance(choices, list) or
                    len(choices) < 2 or not all(isinstance(c, str) and c for c in choices) or
                    not isinstance(item.get("label"), int) or
                    not 0 <= item["label"] < len(choices)):
                sys.exit(f"error: {path}:{number}: an item needs a string context, at least two "
                         f"non-empty string choices and an integer label indexing them")
            item.setdefault("id", number - 1)
            items.append(item)
    if not items:
        sys.exit(f"error: {path}: no items")
    return items


def model_files_sha256(model_dir):
    """sha256 of each regular file of the model directory (top level, no hidden files)."""
    out = {}
    for name in sorted(os.listdir(model_dir)):
        path = os.path.join(model_dir, name)
        if os.path.isfile(path) and not name.startswith("."):
            out[name] = sha256_file(path)
    return out


class Server:
    """A spqr-server child on 127.0.0.1 with ephemeral ports."""

    def __init__(self, binary, model_dir, threads, extra):
        cmd = [binary, "--model", model_dir, "--listen", "127.0.0.1:0", "--metrics_port", "0",
               "--threads", str(threads), *extra]
        self.cmd = cmd
        self.proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                     text=True)
        self.stderr = []
        lines = queue.Queue()
        threading.Thread(target=self._drain_stderr, daemon=True).start()
        threading.Thread(target=self._pump_stdout, args=(lines,), daemon=True).start()
        self.address = None
        deadline = time.monotonic() + START_TIMEOUT_S
        while self.address is None and time.monotonic() < deadline:
            try:
                line = lines.get(timeout=1.0)
            except queue.Empty:
                continue
            if line is None:
                break  # the server exited
            match = re.match(r"^listening on (127\.0\.0\.1:\d+)$", line.strip())
            if match:
                self.address = match.group(1)
        if self.address is None:
            self.stop()
            sys.exit(f"error: spqr-server did not start within {START_TIMEOUT_S} s or exited "
                     f"({' '.join(cmd)}); stderr:\n" + "".join(self.stderr[-30:]))

    def _pump_stdout(self, lines):
        for line in self.proc.stdout:
            lines.put(line)
        lines.put(None)

    def _drain_stderr(self):
        for line in self.proc.stderr:
            self.stderr.append(line)

    def stop(self):
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=60)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=10)


def check_pair(item, k, pair):
    where = f"item {item['id']} choice {k}"
    if pair.num_continuation_tokens < 1:
        raise ContractError(f"{where}: num_continuation_tokens = {pair.num_continuation_tokens}")
    s = pair.sum_logprob
    if not math.isfinite(s) or s > 1e-9:
        raise ContractError(f"{where}: sum_logprob = {s} is not a finite log-probability")
    if len(pair.token_logprobs) != pair.num_continuation_tokens:
        raise ContractError(f"{where}: {len(pair.token_logprobs)} token_logprobs for "
                            f"{pair.num_continuation_tokens} continuation tokens")
    total = sum(t.logprob for t in pair.token_logprobs)
    if not all(math.isfinite(t.logprob) for t in pair.token_logprobs):
        raise ContractError(f"{where}: a token logprob is not finite")
    if abs(total - s) > 1e-4 * max(1.0, abs(s)):
        raise ContractError(f"{where}: token_logprobs sum to {total}, sum_logprob is {s}")


def score_item(client, item, timeout, prefix_id):
    """Scores one item: one Score call with a (context, choice) pair per choice; with prefix_id,
    also each choice's continuation tokens after that single token alone (acc_mi)."""
    choices = item["choices"]
    pairs = [(item["context"], choice) for choice in choices]
    response = client.score(pairs=pairs, timeout=timeout)
    if len(response.pair_scores) != len(pairs):
        raise ContractError(f"item {item['id']}: {len(response.pair_scores)} pair scores for "
                            f"{len(pairs)} pairs")
    for k, pair in enumerate(response.pair_scores):
        check_pair(item, k, pair)
    scores = response.pair_scores
    sums = [p.sum_logprob for p in scores]
    lengths = [len(c) for c in choices]
    pred = zeroshot_stats.choose(sums)
    pred_norm = zeroshot_stats.choose(sums, lengths)
    result = {
        "id": item["id"],
        "label": item["label"],
        "sum_logprob": sums,
        "num_tokens": [p.num_continuation_tokens for p in scores],
        "num_context_tokens": scores[0].num_context_tokens,
        "is_greedy": [p.is_greedy for p in scores],
        "pred": pred,
        "pred_norm": pred_norm,
        "correct": pred == item["label"],
        "correct_norm": pred_norm == item["label"],
        "prompt_tokens": response.usage.prompt_tokens,
    }
    if prefix_id is not None:
        # log P(choice tokens | prefix token alone): lm-eval's empty-context request (its
        # prefix_token_id is the bos, else the eot token), on exactly the token ids the pair
        # scored, so the two terms of the difference score the same sequence.
        alone = []
        for k, pair in enumerate(scores):
            ids = [prefix_id] + [t.token_id for t in pair.token_logprobs]
            answer = client.score(token_ids=ids, timeout=timeout)
            if answer.num_scored_tokens != len(ids) - 1 or not math.isfinite(answer.sum_logprob):
                raise ContractError(f"item {item['id']} choice {k}: context-free score of "
                                    f"{len(ids)} ids gave {answer.num_scored_tokens} tokens, "
                                    f"sum {answer.sum_logprob}")
            alone.append(answer.sum_logprob)
            result["prompt_tokens"] += answer.usage.prompt_tokens
        pred_mi = zeroshot_stats.choose([s - u for s, u in zip(sums, alone)])
        result.update({"unconditional_sum_logprob": alone, "pred_mi": pred_mi,
                       "correct_mi": pred_mi == item["label"]})
    return result


def wait_serving(client, server):
    """Waits for SERVING; stops early with the server's stderr when the child server exits."""
    deadline = time.monotonic() + START_TIMEOUT_S
    while time.monotonic() < deadline:
        if server is not None and server.proc.poll() is not None:
            sys.exit(f"error: spqr-server exited with status {server.proc.returncode} "
                     f"({' '.join(server.cmd)}); stderr:\n" + "".join(server.stderr[-30:]))
        try:
            client.wait_until_serving(timeout=1.0)
            return
        except TimeoutError:
            pass
    sys.exit(f"error: the server is not SERVING after {START_TIMEOUT_S} s")


def score_all(address, stubs, items, concurrency, timeout, unconditional, server=None):
    from spqr_client import Client
    from google.protobuf import json_format
    with Client(address, stubs_dir=stubs) as client:
        wait_serving(client, server)
        info = client.info(timeout=30)
        prefix_id = None
        if unconditional:
            prefix_id = info.bos_token_id if info.bos_token_id >= 0 else info.eos_token_ids[0]
        start = time.monotonic()
        with concurrent.futures.ThreadPoolExecutor(max_workers=concurrency) as pool:
            results = list(pool.map(
                lambda it: score_item(client, it, timeout, prefix_id), items))
        wall = time.monotonic() - start
    quant = json_format.MessageToDict(info.quantization, preserving_proto_field_name=True)
    return results, wall, {"model_dir": info.model_dir, "backend": info.backend,
                           "vocab_size": info.architecture.vocab_size, "quantization": quant,
                           "unconditional_prefix_token_id": prefix_id}


def summarize(label, results):
    n = len(results)
    out = {"label": label, "n": n}
    for name, key, _ in METRICS:
        if key not in results[0]:
            continue
        k = sum(1 for r in results if r[key])
        low, high = zeroshot_stats.wilson(k, n)
        out[name] = k / n
        out[name + "_correct"] = k
        out[name + "_ci95_wilson"] = [low, high]
    out["gold_is_greedy"] = sum(1 for r in results if r["is_greedy"][r["label"]]) / n
    return out


def dumps_report(report):
    """The report as JSON text: indented, except each per-item record on one line (the files stay
    a fifth of the size and still diff by item)."""
    item_lists = {}
    runs = []
    for n, run in enumerate(report["runs"]):
        key = f"@@items{n}@@"
        item_lists[key] = run["items"]
        runs.append(dict(run, items=key))
    text = json.dumps(dict(report, runs=runs), indent=1)
    for key, items in item_lists.items():
        lines = ",\n".join("   " + json.dumps(item, separators=(",", ":")) for item in items)
        text = text.replace(json.dumps(key), "[\n" + lines + "\n  ]")
    return text + "\n"


def parse_run(text):
    label, sep, model = text.partition("=")
    if not sep or not label or not model:
        sys.exit(f"error: --run wants LABEL=MODEL_DIR, got {text!r}")
    return label, model


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--set", default=os.path.join(HERE, "nextsentence-test.jsonl"))
    parser.add_argument("--run", action="append", default=[], metavar="LABEL=MODEL_DIR",
                        help="start spqr-server on MODEL_DIR and score (repeatable)")
    parser.add_argument("--address", help="score against this running server instead")
    parser.add_argument("--label", default="server", help="label of the --address run")
    parser.add_argument("--baseline", help="label the others are compared with (default: first)")
    parser.add_argument("--server", default=os.path.join(REPO, "build", "server", "spqr-server"))
    parser.add_argument("--stubs", default=os.path.join(REPO, "build", "python_stubs"))
    parser.add_argument("--threads", type=int, default=2, help="server CPU threads")
    parser.add_argument("--server-arg", action="append", default=[],
                        help="extra spqr-server flag (repeatable), e.g. --server-arg=--backend=cpu")
    parser.add_argument("--concurrency", type=int, default=8, help="Score calls in flight")
    parser.add_argument("--no-unconditional", action="store_true",
                        help="skip the context-free scores (and so acc_mi)")
    parser.add_argument("--limit", type=int, help="only the first N items")
    parser.add_argument("--timeout", type=float, default=600.0, help="seconds per Score call")
    parser.add_argument("--out", required=True, help="JSON result file")
    args = parser.parse_args()
    if bool(args.run) == bool(args.address):
        sys.exit("error: give --run LABEL=MODEL_DIR (one or more) or --address HOST:PORT")

    items = load_set(args.set)
    if args.limit:
        items = items[:args.limit]
    runs = [parse_run(r) for r in args.run] if args.run else [(args.label, None)]
    labels = [label for label, _ in runs]
    if len(set(labels)) != len(labels):
        sys.exit(f"error: run labels must be distinct: {labels}")
    baseline = args.baseline or labels[0]
    if baseline not in labels:
        sys.exit(f"error: --baseline {baseline} is not one of {labels}")

    report = {
        "tool": "bench/zeroshot/run_zeroshot.py",
        "date": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"),
        "commit": git_commit(),
        "command": " ".join(["/usr/bin/python3", os.path.relpath(__file__, REPO)] + sys.argv[1:]),
        "results_by": "each run records its own date, commit and command (runs already in --out "
                      "are kept)",
        "set": {"path": os.path.relpath(os.path.abspath(args.set), REPO),
                "sha256": sha256_file(args.set), "items": len(items),
                "limit": args.limit},
        "interval": "95 % Wilson score interval",
        "comparison": "exact McNemar (two-sided) and 95 % paired-bootstrap percentile interval of "
                      "the accuracy difference (items resampled 10,000 times, seed 0)",
        "runs": [],
        "comparisons": [],
    }
    # Runs already in --out (same label, same set bytes, same items, same model files) are kept
    # instead of scored again, so configurations can be added one at a time (and a run that was
    # interrupted resumes with the configurations it had not finished).
    previous = {}
    if os.path.exists(args.out):
        with open(args.out) as f:
            old = json.load(f)
        if old.get("set", {}).get("sha256") == report["set"]["sha256"] and \
                old["set"].get("items") == len(items):
            previous = {run["label"]: run for run in old.get("runs", [])}
    command = report["command"]
    for label, model in runs:
        kept = previous.get(label)
        if kept and model and kept.get("model") == model and \
                kept.get("model_files_sha256") == model_files_sha256(model):
            print(f"[{label}] kept from {args.out} (scored {kept.get('date')})", flush=True)
            report["runs"].append(kept)
            continue
        server = None
        if model is not None:
            if not os.path.isdir(model):
                sys.exit(f"error: --run {label}: {model} is not a directory")
            server = Server(args.server, model, args.threads, args.server_arg)
            address = server.address
        else:
            address = args.address
        print(f"[{label}] scoring {len(items)} items on {address} ...", flush=True)
        try:
            results, wall, info = score_all(address, args.stubs, items, args.concurrency,
                                            args.timeout, not args.no_unconditional, server)
        except ContractError as error:
            sys.exit(f"error: [{label}] the Score answer breaks the contract: {error}")
        finally:
            if server is not None:
                server.stop()
        run = summarize(label, results)
        run.update({"date": datetime.datetime.now(datetime.timezone.utc).strftime(
                        "%Y-%m-%dT%H:%M:%SZ"), "commit": report["commit"], "command": command,
                    "model": model, "model_files_sha256": model_files_sha256(model) if model
                    else None, "server": info, "threads": args.threads if model else None,
                    "wall_s": wall, "prompt_tokens": sum(r["prompt_tokens"] for r in results),
                    "items": results})
        report["runs"].append(run)
        print(f"[{label}] acc {run['acc']:.4f} [{run['acc_ci95_wilson'][0]:.4f}, "
              f"{run['acc_ci95_wilson'][1]:.4f}]  acc_norm {run['acc_norm']:.4f} "
              f"[{run['acc_norm_ci95_wilson'][0]:.4f}, {run['acc_norm_ci95_wilson'][1]:.4f}]  "
              + (f"acc_mi {run['acc_mi']:.4f} [{run['acc_mi_ci95_wilson'][0]:.4f}, "
                 f"{run['acc_mi_ci95_wilson'][1]:.4f}]  " if "acc_mi" in run else "") +
              f"{run['prompt_tokens']} tokens in {wall:.1f} s", flush=True)

    base = next(r for r in report["runs"] if r["label"] == baseline)
    for run in report["runs"]:
        if run is base:
            continue
        entry = {"baseline": baseline, "other": run["label"]}
        for name, key, pred in METRICS:
            if key not in base["items"][0]:
                continue
            entry[name] = zeroshot_stats.compare(
                [r[key] for r in base["items"]], [r[key] for r in run["items"]],
                [r[pred] for r in base["items"]], [r[pred] for r in run["items"]])
        report["comparisons"].append(entry)
        c = entry["acc"]
        print(f"[{run['label']} vs {baseline}] acc difference {c['difference']:+.4f} "
              f"[{c['difference_ci95_bootstrap'][0]:+.4f}, "
              f"{c['difference_ci95_bootstrap'][1]:+.4f}], McNemar p {c['mcnemar_exact_p']:.3f}, "
              f"same choice {c['same_prediction']:.3f}", flush=True)

    os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
    with open(args.out, "w") as f:
        f.write(dumps_report(report))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
