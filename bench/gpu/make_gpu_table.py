#!/usr/bin/env python3
"""Markdown table from a spqr-bench-gpu JSON file (bench/gpu/spqr_gpu_bench.cc): per shape, SpQR
configuration, batch and path (every path the benchmark timed; * = the one ChooseSpqrGpuPath
picks), the SpQR layer time, fp16 cuBLAS time, speed-up, and GB/s on the bytes
each must read as a share of the copy bandwidth measured in the same run.

  bench/gpu/make_gpu_table.py bench/results/gpu/<run>.json > table.md
"""
import json
import sys


def main():
    if len(sys.argv) != 2:
        sys.exit(__doc__)
    run = json.load(open(sys.argv[1]))
    dev = run["device"]
    copy = run["copy"]["read_plus_write_gbps"]
    print(f"Device: {dev['name']} ({dev['arch']}, driver {dev['driver_version']}), commit "
          f"{run['commit'] or '?'}, {run['date']}, median of {run['iters']} runs; measured copy "
          f"bandwidth {copy:.0f} GB/s (read + write).")
    print()
    fp16 = {(r["m"], r["n"], r["batch"]): r for r in run["results"] if r["kernel"] == "fp16_cublas"}
    print("| shape m x n | config | batch | path | SpQR us | fp16 us | speed-up | SpQR GB/s | "
          "% of copy |")
    print("|---|---|---:|---|---:|---:|---:|---:|---:|")
    for r in run["results"]:
        if r["kernel"] != "spqr":
            continue
        base = fp16.get((r["m"], r["n"], r["batch"]))
        base_us = base["ms"] * 1e3 if base else float("nan")
        print(f"| {r['m']} x {r['n']} | {r['config']} | {r['batch']} | {r['path']}{'*' if r.get('chosen') else ''} | "
              f"{r['ms'] * 1e3:.1f} | {base_us:.1f} | {base_us / (r['ms'] * 1e3):.2f}x | "
              f"{r['gbps']:.0f} | {100.0 * r['gbps'] / copy:.0f} % |")


if __name__ == "__main__":
    main()
