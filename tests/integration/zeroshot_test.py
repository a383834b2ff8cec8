"""The zero-shot tool (bench/zeroshot/run_zeroshot.py) against the real spqr-server on the committed
test model (issue 16, item 5).

A tiny set: the first items of the committed next-sentence set plus a PLANTED item whose answer is
obvious to this model whatever its (random) weights: of 40 equally long candidate continuations,
scored by the test through the text-mode Score (a different route than the tool's pairs), the gold
is the most likely and the distractors the three least likely. The planted item is also added a
second time with the label on a distractor, which the tool must then count as wrong.

Checks the tool's JSON: accuracies in [0, 1] inside Wilson intervals that the test recomputes with
its own formula, finite per-choice log-probabilities <= 0, the decisions are the argmax of the
reported scores, the planted item right (acc, acc_norm), its mislabeled twin wrong; the pair scores
equal the text-mode Score of context + continuation summed over the continuation tokens (an
independent route through the RPC); a second configuration on the same model (started by the tool
with --run) gives bit-identical scores, a zero difference and McNemar p = 1; and malformed sets
are refused with an error naming the problem.
"""
import json
import math
import os
import subprocess
import sys
import tempfile

import server_harness
from server_harness import ServerProcess, parse_args, import_stubs

ARGS, REST = parse_args()
server_harness.ARGS = ARGS
globals().update(import_stubs(ARGS.stubs))

REPO = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", ".."))
TOOL = os.path.join(REPO, "bench", "zeroshot", "run_zeroshot.py")
SET = os.path.join(REPO, "bench", "zeroshot", "nextsentence-test.jsonl")
PLANTED_CONTEXT = "The GNU General Public License is a free, copyleft license for"


def fail(message):
    print(f"FAIL: {message}")
    sys.exit(1)


def wilson(k, n, z=1.959963984540054):
    # Written out independently of zeroshot_stats.wilson (the textbook form).
    p = k / n
    centre = p + z * z / (2 * n)
    margin = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n))
    return (centre - margin) / (1 + z * z / n), (centre + margin) / (1 + z * z / n)


def run_tool(args):
    cmd = [sys.executable, TOOL, "--server", ARGS.server, "--stubs", ARGS.stubs,
           "--threads", "1", *args]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=240)


def text_mode_tail(server, context, continuation):
    """log P(continuation | context) by the text-mode Score: the tokens after the context's own."""
    n_context = server.stub.Score(pb.ScoreRequest(text=context), timeout=60).num_scored_tokens + 1
    answer = server.stub.Score(pb.ScoreRequest(text=context + continuation), timeout=60)
    tail = [t.logprob for t in answer.token_logprobs][n_context - 1:]
    return sum(tail), len(tail)


def planted_choices(server):
    """Four choices for PLANTED_CONTEXT whose answer is obvious to this model: the candidates are
    40 slices of 20 characters of the GPL text (all the same length, so acc and acc_norm decide
    alike), scored by the text-mode Score (not the pairs the tool uses); the gold is the most
    likely one, the distractors the three least likely. The gold goes to index 2."""
    with open(os.path.join(REPO, "tools", "test_model_text.txt"), encoding="utf-8") as f:
        words = " ".join(f.read().split())
    candidates = sorted({" " + words[i * 97:i * 97 + 20].strip().ljust(20, ".")
                         for i in range(40)})
    scored = sorted((text_mode_tail(server, PLANTED_CONTEXT, c)[0], c) for c in candidates)
    (worst, _), (second, _) = scored[2], scored[-2]
    best, gold = scored[-1]
    if best - max(worst, second) < 1.0:
        fail(f"no clear best candidate to plant: {scored[-3:]}")
    print(f"planted gold {gold!r} ({best:.2f}); distractors "
          f"{[(c, round(x, 2)) for x, c in scored[:3]]}")
    return [scored[0][1], scored[1][1], gold, scored[2][1]]


def check_run(run, items):
    n = len(items)
    if run["n"] != n or len(run["items"]) != n:
        fail(f"run {run['label']}: {run['n']} items reported, {n} sent")
    for metric, key in (("acc", "correct"), ("acc_norm", "correct_norm"), ("acc_mi", "correct_mi")):
        acc = run[metric]
        low, high = run[metric + "_ci95_wilson"]
        k = sum(1 for r in run["items"] if r[key])
        if not 0.0 <= acc <= 1.0 or abs(acc - k / n) > 1e-12:
            fail(f"{metric} = {acc} is not {k}/{n}")
        want = wilson(k, n)
        if not (0.0 <= low <= acc <= high <= 1.0) or abs(low - want[0]) > 1e-9 or \
                abs(high - want[1]) > 1e-9:
            fail(f"{metric} interval [{low}, {high}] is not the Wilson interval {want} of {k}/{n}")
    for item, r in zip(items, run["items"]):
        sums, alone = r["sum_logprob"], r["unconditional_sum_logprob"]
        if len(sums) != len(item["choices"]) or len(alone) != len(sums):
            fail(f"item {item['id']}: {len(sums)} scores for {len(item['choices'])} choices")
        if not all(math.isfinite(x) and x <= 0 for x in sums + alone):
            fail(f"item {item['id']}: a log-probability is not finite and <= 0: {sums} {alone}")
        if min(r["num_tokens"]) < 1:
            fail(f"item {item['id']}: a choice scored no tokens: {r['num_tokens']}")
        best = max(range(len(sums)), key=lambda k: (sums[k], -k))
        norm = [s / len(c) for s, c in zip(sums, item["choices"])]
        best_norm = max(range(len(norm)), key=lambda k: (norm[k], -k))
        mi = [s - u for s, u in zip(sums, alone)]
        best_mi = max(range(len(mi)), key=lambda k: (mi[k], -k))
        if (r["pred"], r["pred_norm"], r["pred_mi"]) != (best, best_norm, best_mi):
            fail(f"item {item['id']}: predictions {r['pred']}, {r['pred_norm']}, {r['pred_mi']} "
                 f"are not the argmax {best}, {best_norm}, {best_mi} of the reported scores")
        if r["correct"] != (best == item["label"]):
            fail(f"item {item['id']}: correct = {r['correct']} but label {item['label']}")


def check_planted(run):
    planted = next(r for r in run["items"] if r["id"] == 1000)
    twin = next(r for r in run["items"] if r["id"] == 1001)
    if not (planted["correct"] and planted["correct_norm"]):
        fail(f"the planted item (gold = the clearly most likely choice) was missed: {planted}")
    if twin["correct"] or twin["correct_norm"] or twin["pred"] != 2:
        fail(f"the mislabeled twin of the planted item is counted right: {twin}")
    print(f"planted item: scores {[round(x, 2) for x in planted['sum_logprob']]}, gold 2")


def check_pairs_against_text_mode(server, items, run):
    """sum_logprob of a pair == text-mode Score of context + continuation, summed over the tokens
    after the context's (the contexts end without whitespace, so nothing moves)."""
    for item, r in list(zip(items, run["items"]))[-2:-1] + list(zip(items, run["items"]))[:1]:
        for k, choice in enumerate(item["choices"]):
            answer = server.stub.Score(pb.ScoreRequest(text=item["context"] + choice), timeout=60)
            tail = [t.logprob for t in answer.token_logprobs][r["num_context_tokens"] - 1:]
            if len(tail) != r["num_tokens"][k] or abs(sum(tail) - r["sum_logprob"][k]) > 1e-3:
                fail(f"item {item['id']} choice {k}: pair score {r['sum_logprob'][k]} over "
                     f"{r['num_tokens'][k]} tokens, text mode {sum(tail)} over {len(tail)}")


def check_refusals(tmp):
    for name, bad, needle in (
            ("label", {"context": "a", "choices": [" b", " c"], "label": 2}, "label"),
            ("empty choice", {"context": "a", "choices": [" b", ""], "label": 0}, "non-empty"),
            ("one choice", {"context": "a", "choices": [" b"], "label": 0}, "two")):
        path = os.path.join(tmp, "bad.jsonl")
        with open(path, "w") as f:
            f.write(json.dumps(bad) + "\n")
        done = run_tool(["--set", path, "--address", "127.0.0.1:1", "--out",
                         os.path.join(tmp, "bad.json")])
        if done.returncode == 0 or needle not in done.stderr:
            fail(f"a set with a bad {name} was not refused by name: rc {done.returncode}, "
                 f"stderr {done.stderr!r}")


def main():
    server = ServerProcess()
    try:
        server.wait_serving()
        choices = planted_choices(server)
        with open(SET, encoding="utf-8") as f:
            items = [json.loads(line) for line in f.readlines()[:4]]
        items.append({"id": 1000, "context": PLANTED_CONTEXT, "choices": choices, "label": 2})
        items.append({"id": 1001, "context": PLANTED_CONTEXT, "choices": choices, "label": 0})
        with tempfile.TemporaryDirectory() as tmp:
            tiny = os.path.join(tmp, "tiny.jsonl")
            with open(tiny, "w", encoding="utf-8") as f:
                for item in items:
                    f.write(json.dumps(item) + "\n")
            out = os.path.join(tmp, "served.json")
            done = run_tool(["--set", tiny, "--address", server.address, "--label", "served",
                             "--out", out])
            if done.returncode != 0:
                fail(f"the tool failed on a running server:\n{done.stdout}\n{done.stderr}")
            served = json.load(open(out))["runs"][0]
            check_run(served, items)
            check_planted(served)
            check_pairs_against_text_mode(server, items, served)

            # Two configurations started by the tool itself, both on the test model: the paired
            # comparison of identical models must be exactly null.
            out2 = os.path.join(tmp, "pair.json")
            done = run_tool(["--set", tiny, "--run", f"one={ARGS.model}",
                             "--run", f"two={ARGS.model}", "--out", out2])
            if done.returncode != 0:
                fail(f"the tool failed with --run:\n{done.stdout}\n{done.stderr}")
            report = json.load(open(out2))
            one, two = report["runs"]
            for run in (one, two):
                check_run(run, items)
                check_planted(run)
            for a, b, c in zip(served["items"], one["items"], two["items"]):
                if not a["sum_logprob"] == b["sum_logprob"] == c["sum_logprob"]:
                    fail(f"item {a['id']}: scores differ between servers of the same model: "
                         f"{a['sum_logprob']} {b['sum_logprob']} {c['sum_logprob']}")
            (comp,) = report["comparisons"]
            for metric in ("acc", "acc_norm", "acc_mi"):
                c = comp[metric]
                if (c["difference"], c["difference_ci95_bootstrap"], c["mcnemar_exact_p"],
                        c["same_prediction"]) != (0.0, [0.0, 0.0], 1.0, 1.0):
                    fail(f"{metric}: identical models compare as different: {c}")
            check_refusals(tmp)
    finally:
        server.stop()
        server.kill()
    print("OK")


if __name__ == "__main__":
    main()
