#!/usr/bin/python3
"""Plots the loss curve of a training log (train_model.py's log.jsonl) to a PNG.

A log that spans resumed runs can repeat steps (a run resumes from its last checkpoint, so the steps
after it are trained and logged again); the last record of each step wins, which is the run whose
weights were kept. Needs python3-matplotlib.

Usage: /usr/bin/python3 tools/train/plot_loss.py LOG.jsonl OUT.png [--dedup-to CLEAN.jsonl]
"""

import argparse
import json
import math


def load(path):
    by_step = {}
    with open(path) as f:
        for line in f:
            if line.strip():
                rec = json.loads(line)
                by_step[rec["step"]] = rec
    return [by_step[s] for s in sorted(by_step)]


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("log")
    p.add_argument("png")
    p.add_argument("--dedup-to", default=None, help="also write the de-duplicated log here")
    args = p.parse_args()
    recs = load(args.log)
    if args.dedup_to:
        with open(args.dedup_to, "w") as f:
            for r in recs:
                f.write(json.dumps(r) + "\n")

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4), dpi=120)
    ax.plot([r["tokens"] / 1e6 for r in recs], [r["loss"] for r in recs], lw=1,
            label="train loss (mean over the logging interval)")
    val = [r for r in recs if "val_loss" in r]
    ax.plot([r["tokens"] / 1e6 for r in val], [r["val_loss"] for r in val], "o-", ms=3,
            label="validation loss (32 windows x 512)")
    ax.axhline(math.log(4096), color="gray", ls=":", label="uniform over 4096 tokens")
    ax.set_xlabel("tokens seen (millions)")
    ax.set_ylabel("cross-entropy (nats/token)")
    ax.set_title(f"reference model: {recs[-1]['step']} steps, "
                 f"{recs[-1]['wall_s'] / 3600:.1f} h wall")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(args.png)
    return 0


if __name__ == "__main__":
    main()
