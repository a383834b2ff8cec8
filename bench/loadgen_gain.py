#!/usr/bin/env python3
"""Throughput gain of one server over another from bench/loadgen.py result files.

    bench/loadgen_gain.py --before 'DIR/loadgen_X_base*.json' --after 'DIR/loadgen_X_new*.json'

Per concurrency level: the tokens/s of every file (runs of the two servers interleaved, one file per
run), their medians, and after/before of the medians. Also the gain of each interleaved pair (the
i-th before and i-th after file in name order), so a reader can see how much the gain moves from
run to run. Prints JSON.
"""
import argparse
import glob
import json
import statistics
import sys


def levels(path):
    with open(path) as f:
        data = json.load(f)
    return {lvl["concurrency"]: lvl["tokens_per_second"] for lvl in data["levels"]}


def main(argv):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--before", required=True, help="glob of the baseline server's files")
    parser.add_argument("--after", required=True, help="glob of the new server's files")
    args = parser.parse_args(argv)
    before = sorted(glob.glob(args.before))
    after = sorted(glob.glob(args.after))
    if not before or not after:
        sys.exit(f"no files: --before matched {len(before)}, --after {len(after)}")
    runs_before = [levels(p) for p in before]
    runs_after = [levels(p) for p in after]
    common = set.intersection(*(set(r) for r in runs_before + runs_after))
    if not common:
        sys.exit("the files share no concurrency level")
    out = {"before": before, "after": after, "levels": {}}
    for c in sorted(common):
        b = [r[c] for r in runs_before]
        a = [r[c] for r in runs_after]
        out["levels"][str(c)] = {
            "before_tokens_per_s": [round(v, 1) for v in b],
            "after_tokens_per_s": [round(v, 1) for v in a],
            "gain_of_medians": round(statistics.median(a) / statistics.median(b), 2),
            "gain_per_pair": [round(y / x, 2) for x, y in zip(b, a)],
        }
    json.dump(out, sys.stdout, indent=2)
    print()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
