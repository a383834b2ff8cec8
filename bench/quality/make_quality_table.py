#!/usr/bin/python3
"""Makes the quality table of docs/quality.md and its plot from the raw JSON lines of
bench/quality/run_quality.py.

The table replaces what lies between the markers
    <!-- quality-table:begin -->  and  <!-- quality-table:end -->
in the Markdown file (with --section NAME: <!-- quality-table:NAME:begin --> and
<!-- quality-table:NAME:end -->, so one page can hold a table per model); the text around them is hand-written and kept. The plot (perplexity increase
over fp16 against average bits per parameter, one series per method family) needs python3-matplotlib
and is skipped with --no-plot. --check exits 1 when the Markdown file's table is not the one the
JSON gives (a ctest runs that, so the committed page cannot drift from the committed numbers).

Usage:
  /usr/bin/python3 bench/quality/make_quality_table.py RESULTS.jsonl --md docs/quality.md \\
      [--section NAME] [--png docs/quality.png] [--no-plot] [--check]
"""

import argparse
import json
import os
import sys



def markers(section):
    """The begin and end markers of the table named section (None: the page's first table)."""
    tag = f"quality-table:{section}:" if section else "quality-table:"
    return f"<!-- {tag}begin -->", f"<!-- {tag}end -->"


def load(path):
    with open(path) as f:
        rows = [json.loads(l) for l in f if l.strip()]
    fp = [r for r in rows if r["config"] == "fp16"]
    if len(fp) != 1:
        sys.exit(f"error: {path} needs exactly one fp16 row, has {len(fp)}")
    # Rows in run_quality.py's CONFIGS order (baselines, then SpQR, then diagnostics), whatever
    # order the runs were made in; unknown names last, in file order.
    sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
    from run_quality import CONFIGS

    order = {c[0]: i for i, c in enumerate(CONFIGS)}
    rest = [r for r in rows if r["config"] != "fp16"]
    return fp[0], sorted(rest, key=lambda r: order.get(r["config"], len(order)))


def table(results_path, fp, rows):
    e0 = fp["eval"]
    lines = [
        "| configuration | bits/param (formula) | bits/param (real bytes) | perplexity | vs fp16 | "
        "outliers | quantization time |",
        "|---|---:|---:|---:|---:|---:|---:|",
        f"| {fp['label']} | 16 | 16 | {e0['ppl']:.3f} | — | — | — |",
    ]
    for r in rows:
        q, e = r["quantization"], r["eval"]
        rel = 100.0 * (e["ppl"] / e0["ppl"] - 1.0)
        label = r["label"]
        if "tau_search" in r:
            label += f" (tau {r['flags'].split('--tau ')[1].split()[0]})"
        lines.append(
            f"| {label} | {q['avg_bits_formula']:.3f} | {q['avg_bits_real']:.3f} | "
            f"{e['ppl']:.3f} | {rel:+.3f} % | {100.0 * q['outlier_share']:.3f} % | "
            f"{q['wall_seconds']:.1f} s |")
    lines += [
        "",
        f"Perplexity: `{e0['text']}`, {e0['windows']} windows of {e0['seq_len']} tokens "
        f"({e0['tokens_scored']:,} scored tokens), model `{fp['model']}` "
        f"(model.safetensors sha256 {fp['model_sha256'][:12]}…). Calibration: {fp['nsamples']} "
        f"windows of {fp['calib_seqlen']} tokens from `{fp['calibration']}`, seed {fp['seed']}. "
        f"Raw results: `{results_path}` (commit {fp['commit']}, {fp['date']}).",
    ]
    return "\n".join(lines) + "\n"


def plot(fp, rows, png):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    ppl0 = fp["eval"]["ppl"]
    fig, ax = plt.subplots(figsize=(7, 4.5), dpi=120)
    styles = {"RTN": ("tab:red", "s"), "GPTQ": ("tab:blue", "^"), "SpQR": ("tab:green", "o"),
              "diag": ("tab:gray", "x")}
    for family, (color, marker) in styles.items():
        pts = sorted((r["quantization"]["avg_bits_formula"], 100.0 * (r["eval"]["ppl"] / ppl0 - 1),
                      r["config"]) for r in rows if r["family"] == family)
        if not pts:
            continue
        ax.scatter([p[0] for p in pts], [p[1] for p in pts], color=color, marker=marker,
                   label=family, zorder=3)
        for x, y, name in pts:
            ax.annotate(name, (x, y), textcoords="offset points", xytext=(4, 4), fontsize=6)
    incs = [100.0 * (r["eval"]["ppl"] / ppl0 - 1) for r in rows]
    if incs and min(incs) > 0 and max(incs) > 100 * min(incs):
        # Increases spanning orders of magnitude (SmolLM2: 0.02 % to 250 %): a linear axis would
        # squash every near-lossless row onto the baseline.
        ax.set_yscale("log")
    else:
        ax.axhline(0.0, color="gray", linestyle="--", label=f"bf16 (ppl {ppl0:.2f})")
    ax.set_xlabel("average bits per parameter (paper formula)")
    ax.set_ylabel("held-out perplexity increase over bf16 (%)")
    ax.set_title(f"{os.path.basename(fp['model'].rstrip('/'))}: perplexity vs. size")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(png)


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("results")
    p.add_argument("--md", required=True)
    p.add_argument("--section", default=None, help="name of the table's markers (default: none)")
    p.add_argument("--png", default=None)
    p.add_argument("--no-plot", action="store_true")
    p.add_argument("--check", action="store_true")
    args = p.parse_args()
    fp, rows = load(args.results)
    BEGIN, END = markers(args.section)
    block = table(args.results, fp, rows)
    with open(args.md) as f:
        text = f.read()
    if BEGIN not in text or END not in text:
        sys.exit(f"error: {args.md} lacks the markers {BEGIN} / {END}")
    head, rest = text.split(BEGIN, 1)
    old, tail = rest.split(END, 1)
    if args.check:
        if old.strip() != block.strip():
            print(f"{args.md}: the table differs from {args.results}; regenerate with "
                  f"bench/quality/make_quality_table.py", file=sys.stderr)
            return 1
        print(f"{args.md}: table matches {args.results}")
        return 0
    with open(args.md, "w") as f:
        f.write(head + BEGIN + "\n" + block + END + tail)
    if not args.no_plot:
        plot(fp, rows, args.png or args.md.rsplit(".", 1)[0] + ".png")
    return 0


if __name__ == "__main__":
    sys.exit(main())
