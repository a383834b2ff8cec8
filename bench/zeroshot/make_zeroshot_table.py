#!/usr/bin/python3
"""Writes the zero-shot tables of docs/zeroshot.md from bench/zeroshot/run_zeroshot.py results.

The text between `<!-- zeroshot-table:begin -->` and `<!-- zeroshot-table:end -->` of --md is
replaced by (1) one row per run: accuracy (acc, acc_norm, acc_mi) with its 95 % Wilson interval,
and (2) one row per comparison and metric: the accuracy difference with its paired-bootstrap 95 %
interval, the discordant items and the exact McNemar p-value, how often the two configurations
pick the same choice, and the mean absolute change of a choice's log-probability (computed here from
the per-item scores). --check compares instead of writing (exit 1 when the page is stale), which is
what the ctest zeroshot_table_matches_results does.

Usage:
  /usr/bin/python3 bench/zeroshot/make_zeroshot_table.py RESULT.json [...] --md docs/zeroshot.md
"""

import argparse
import json
import math
import os
import sys

BEGIN, END = "<!-- zeroshot-table:begin -->", "<!-- zeroshot-table:end -->"
METRICS = ("acc", "acc_norm", "acc_mi")


def describe(run):
    q = run["server"]["quantization"]
    if q.get("method", "none") == "none":
        return f"{q.get('weight_dtype', 'dense')} (unquantized)"
    tau = q.get("tau", math.inf)
    tau_text = "no outliers" if tau in ("Infinity", math.inf) else f"tau {float(tau):g}"
    return (f"{q['method'].upper() if q['method'] != 'spqr' else 'SpQR'} w{q.get('wbits')} "
            f"{q.get('beta1')}/{q.get('beta2')} {tau_text}")


def bits(run):
    q = run["server"]["quantization"]
    if q.get("method", "none") == "none":
        return "16"
    return f"{float(q['bits_per_param_formula']):.3f}"


def cell(run, metric):
    if metric not in run:
        return "—"
    low, high = run[metric + "_ci95_wilson"]
    return f"{100 * run[metric]:.1f} % [{100 * low:.1f}, {100 * high:.1f}]"


def mean_abs_change(base, other):
    """Mean over items and choices of |sum_logprob(other) - sum_logprob(baseline)| (nats)."""
    diffs = [abs(x - y) for a, b in zip(base["items"], other["items"])
             for x, y in zip(a["sum_logprob"], b["sum_logprob"])]
    return sum(diffs) / len(diffs)


def model_name(result):
    return os.path.basename(os.path.normpath(result["runs"][0]["model"] or "server"))


def tables(results, paths):
    lines = ["| model | configuration | bits/param (formula) | acc [95 % CI] | acc_norm [95 % CI] "
             "| acc_mi [95 % CI] | scored tokens | wall |",
             "|---|---|---:|---:|---:|---:|---:|---:|"]
    for result in results:
        for run in result["runs"]:
            lines.append(f"| `{model_name(result)}` | {describe(run)} | {bits(run)} | "
                         f"{cell(run, 'acc')} | {cell(run, 'acc_norm')} | {cell(run, 'acc_mi')} | "
                         f"{run['prompt_tokens']:,} | "
                         f"{run['wall_s']:.0f} s |")
    lines += ["", "| model | configuration vs baseline | metric "
              "| difference [95 % paired bootstrap] "
              "| only baseline right / only other right | McNemar exact p | same choice "
              "| mean abs. change of log P(choice) |",
              "|---|---|---|---:|---:|---:|---:|---:|"]
    for result in results:
        by_label = {run["label"]: run for run in result["runs"]}
        for comp in result["comparisons"]:
            other, base = by_label[comp["other"]], by_label[comp["baseline"]]
            drift = mean_abs_change(base, other)
            for metric in METRICS:
                if metric not in comp:
                    continue
                c = comp[metric]
                low, high = c["difference_ci95_bootstrap"]
                lines.append(
                    f"| `{model_name(result)}` | {describe(other)} vs {describe(base)} "
                    f"| {metric} | "
                    f"{100 * c['difference']:+.1f} pt [{100 * low:+.1f}, {100 * high:+.1f}] | "
                    f"{c['only_baseline_correct']} / {c['only_other_correct']} | "
                    f"{c['mcnemar_exact_p']:.3g} | {100 * c['same_prediction']:.1f} % | "
                    f"{drift:.3f} nats |")
    lines.append("")
    sets = sorted({(r["set"]["path"], r["set"]["sha256"], r["set"]["items"]) for r in results})
    for path, digest, n in sets:
        lines.append(f"Set: `{path}` ({n} items, sha256 {digest[:12]}…).")
    for result, path in zip(results, paths):
        dates = sorted({run.get("date", result["date"])[:10] for run in result["runs"]})
        commits = sorted({str(run.get("commit", result["commit"])) for run in result["runs"]})
        lines.append(f"Raw results: `{path}` (scored {', '.join(dates)}, commit "
                     f"{', '.join(commits)}).")
    return "\n".join(lines) + "\n"


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("results", nargs="+")
    parser.add_argument("--md", required=True)
    parser.add_argument("--check", action="store_true")
    args = parser.parse_args()
    results = []
    for path in args.results:
        with open(path) as f:
            results.append(json.load(f))
    repo = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    rel = [os.path.relpath(os.path.abspath(p), repo) for p in args.results]
    body = tables(results, rel)
    with open(args.md) as f:
        page = f.read()
    if BEGIN not in page or END not in page:
        sys.exit(f"error: {args.md} has no {BEGIN} ... {END} section")
    head, rest = page.split(BEGIN, 1)
    _, tail = rest.split(END, 1)
    new = head + BEGIN + "\n" + body + END + tail
    if args.check:
        if new != page:
            sys.exit(f"error: {args.md} does not match {', '.join(rel)}; regenerate it with "
                     f"bench/zeroshot/make_zeroshot_table.py")
        print(f"{args.md}: matches {len(results)} result file(s)")
        return
    with open(args.md, "w") as f:
        f.write(new)
    print(f"wrote {args.md}")


if __name__ == "__main__":
    main()
