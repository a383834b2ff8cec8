#!/usr/bin/env python3
"""Performance model of the GPU SpQR kernels (engine/backend/cuda/spqr_gpu_linear.cuh), checkable
without a GPU: for each kernel and shape, the bytes it must read, the bytes it does read (counted
from the layout, engine/backend/cuda/spqr_gpu_layout.h), its instructions per weight (counted from
the kernel's code), registers and spills (ptxas -v, bench/results/gpu/spqr-gpu-resources-sm90.txt,
from tools/cuda-resource-report.sh), occupancy (the CUDA occupancy calculator's formula for sm_90)
and the predicted time on an H200 next to fp16 cuBLAS's predicted time.

Usage:
  bench/gpu/perf_model.py                 print the generated section of docs/gpu-performance.md
  bench/gpu/perf_model.py --write DOC     replace the section between the markers in DOC
  bench/gpu/perf_model.py --check DOC     exit 1 when DOC's section differs from the output (ctest)
  bench/gpu/perf_model.py --json          the same numbers as JSON (for comparing with bench/gpu)

Everything below is arithmetic on stated constants; none of it is a measurement.
"""
import argparse
import json
import math
import os
import re
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
RESOURCES = os.path.join(ROOT, "bench/results/gpu/spqr-gpu-resources-sm90.txt")
BEGIN, END = "<!-- perf_model:begin -->", "<!-- perf_model:end -->"

# H200 SXM datasheet values (not measured here): HBM3e bandwidth, SMs, boost clock, dense fp16
# tensor throughput. L2 and L1 bandwidths are the usual Hopper figures; the benchmark's measured
# copy bandwidth replaces DRAM_BW when comparing with a run.
DRAM_BW = 4.8e12
L2_BW = 5.5e12
SMS = 132
CLOCK = 1.98e9
L1_BYTES_PER_CLK = 128
TENSOR_F16 = 989e12
# Warp instructions per clock per SM by pipe (sm_90: 128 FP32 lanes, 64 INT32 lanes, 32 LSU
# lanes, 4 schedulers issuing one instruction each).
ISSUE, FP_PIPE, INT_PIPE, LSU_PIPE = 4.0, 4.0, 2.0, 1.0

SHAPES = [(4096, 4096), (11008, 4096), (4096, 11008), (8192, 8192), (28672, 8192)]  # (m, n)
CONFIGS = [  # name, wbits, beta1, beta2, stats_bits, outlier share
    ("w3 16/16", 3, 16, 16, 3, 0.005),
    ("w3 8/64", 3, 8, 64, 3, 0.01),
    ("w4 16/16", 4, 16, 16, 3, 0.003),
]
DECODE_BATCHES = [1, 2, 4, 8, 16]
GEMM_BATCHES = [32, 128, 1024]
DECODE_WARPS = 4  # kSpqrGpuDecodeWarps
CHUNK = 128  # kSpqrGpuChunkCols


def words(count, bits):
    return (count * bits + 31) // 32


def format_bytes(m, n, w, b1, b2, sb, nnz):
    """SpqrLayerPayloadBytes of the packed spqr-format 1 layer (what the format stores)."""
    g = n // b1
    stats = 2 * m * words(g, sb) * 4 + (m + b2 - 1) // b2 * g * 8
    return m * words(n, w) * 4 + stats + (m + 1) * 4 + nnz * (8 if n > 65535 else 4) + n * 4


def layout_bytes(m, n, w, b1, b2, sb, nnz):
    """SpqrGpuLayoutBytesFor (spqr_gpu_layout.cc), the same formula."""
    g = n // b1
    chunks = (n + CHUNK - 1) // CHUNK
    stats = m * words(g, 2 * sb) * 4 + (m + b2 - 1) // b2 * g * 8
    return m * chunks * w * 16 + stats + (m + 1) * 4 + nnz * (8 if n > 65535 else 4) + n * 4


def padded_batch(b):
    p = 1
    while p < b:
        p *= 2
    return p


def rows_per_warp(w, b):
    return 3 if padded_batch(b) == 16 else 4  # RowsPerWarp in spqr_gpu_linear.cu


def decode_ops(w, b1, batch):
    """Warp instructions per weight of SpqrGpuDecodeKernel, by pipe (read off its inner loop)."""
    bp, r = padded_batch(batch), rows_per_warp(w, batch)
    straddle = 2.0 * 2 / 32 if w == 3 else 0.0  # 2 codes in 32 take shr+shl+or instead of one shift
    ops = {
        "int": 2.0 + straddle,  # shift, lop3 (f = 1 + q 2^-W)
        "fp": 1.0 + bp,  # fma for the weight, one fma per sequence
        # code loads (W x 16 B per 128 codes); input loads shared by the R rows
        "lsu": w / 128.0 + ((2.0 * bp) / (8 * r) if bp <= 2 else bp / (4.0 * r)),
        # statistics per (row, group): 3 loads, ~6 integer, 2 conversions, 6 fp: ~17; unit loop ~4
        "other": 17.0 / b1 + 4.0 / (8 * r),
    }
    ops["total"] = sum(ops.values())
    return ops


def read_resources():
    regs = {}
    if not os.path.exists(RESOURCES):
        return regs
    for line in open(RESOURCES):
        m = re.search(r"SpqrGpuDecodeKernel<(\d+), (\d+), (\d+)>.* registers=(\d+) "
                      r"spill_stores=(\d+) spill_loads=(\d+)", line)
        if m:
            w, b, r, reg, ss, sl = map(int, m.groups())
            regs[("decode", w, b)] = (reg, ss + sl)
            continue
        m = re.search(r"SpqrGpuDequantizeTilesKernel<(\d+), __half>.* registers=(\d+) "
                      r"spill_stores=(\d+) spill_loads=(\d+)", line)
        if m:
            w, reg, ss, sl = map(int, m.groups())
            regs[("dequant", w)] = (reg, ss + sl)
    return regs


def occupancy(regs, threads):
    """Resident warps / 64 on sm_90 (occupancy calculator: registers allocated per warp in units of
    256, 64K registers, at most 32 blocks and 64 warps per SM; no shared memory used)."""
    warps = threads // 32
    per_warp = math.ceil(regs * 32 / 256) * 256
    blocks = min((65536 // per_warp) // warps, 32, 64 // warps)
    return blocks * warps / 64.0


def predict_decode(m, n, cfg, batch, regs):
    name, w, b1, b2, sb, share = cfg
    nnz = int(round(m * n * share))
    bp, r = padded_batch(batch), rows_per_warp(w, batch)
    lay = layout_bytes(m, n, w, b1, b2, sb, nnz)
    must = format_bytes(m, n, w, b1, b2, sb, nnz) + batch * n * 4 + batch * m * 4
    # DRAM: the layout once, x read by the gather, xt written and read back, y written.
    dram = lay + batch * n * 4 + 2 * n * bp * 4 + batch * m * 4
    blocks = math.ceil(m / (DECODE_WARPS * r))
    l2 = dram + blocks * n * bp * 4  # each block's warps fetch the whole xt (shared via L1)
    l1 = m * n * 4.0 * bp / r  # input bytes per weight per lane, shared by the R rows
    ops = decode_ops(w, b1, batch)
    weights = m * n
    clk = SMS * CLOCK
    t = {
        "dram": dram / DRAM_BW,
        "l2": l2 / L2_BW,
        "l1": l1 / (L1_BYTES_PER_CLK * clk),
        "issue": weights / 32 * ops["total"] / (ISSUE * clk),
        "fp": weights / 32 * ops["fp"] / (FP_PIPE * clk),
        "int": weights / 32 * ops["int"] / (INT_PIPE * clk),
        "lsu": weights / 32 * ops["lsu"] / (LSU_PIPE * clk),
    }
    bound = max(t, key=t.get)
    reg, spill = regs.get(("decode", w, bp), (None, None))
    return {
        "kernel": "decode", "config": name, "m": m, "n": n, "batch": batch, "nnz": nnz,
        "must_read": must, "does_read": dram, "l2_bytes": l2, "ops_per_weight": ops,
        "flops_per_weight": 2 * batch, "registers": reg, "spills": spill,
        "occupancy": occupancy(reg, DECODE_WARPS * 32) if reg else None,
        "time_s": t[bound], "bound": bound, "fp16_time_s": fp16_time(m, n, batch),
    }


def fp16_time(m, n, batch):
    bytes_ = m * n * 2 + batch * n * 2 + batch * m * 4
    return max(bytes_ / DRAM_BW, 2.0 * m * n * batch / TENSOR_F16)


def predict_gemm_path(m, n, cfg, batch, regs):
    name, w, b1, b2, sb, share = cfg
    nnz = int(round(m * n * share))
    lay = layout_bytes(m, n, w, b1, b2, sb, nnz)
    must = format_bytes(m, n, w, b1, b2, sb, nnz) + batch * n * 4 + batch * m * 4
    # dequantize: read the layout, write fp16 W; gather: x in, fp16 x out; GEMM: fp16 W and x in.
    dram = lay + m * n * 2 + batch * n * 6 + m * n * 2 + batch * n * 2 + batch * m * 4
    # SpqrGpuDequantizeTilesKernel per weight: shift (+ w3's split codes), lop3, fadd (2^23 trick),
    # fsub, fmul (the exact decode), two fp16 conversions and a pack per 2 weights, one 16-byte store
    # per 8, statistics per group (~17 / beta1); the outlier pass is per outlier only.
    deq_instr = 5.0 + (0.125 if w == 3 else 0.0) + 1.5 + 1.0 / 8 + 17.0 / b1
    clk = SMS * CLOCK
    t_deq = max((lay + m * n * 2) / DRAM_BW, m * n / 32 * deq_instr / (ISSUE * clk))
    t_gemm = fp16_time(m, n, batch)
    reg, spill = regs.get(("dequant", w), (None, None))
    return {
        "kernel": "dequant+cuBLAS", "config": name, "m": m, "n": n, "batch": batch, "nnz": nnz,
        "must_read": must, "does_read": dram, "l2_bytes": dram,
        "ops_per_weight": {"total": deq_instr}, "flops_per_weight": 2 * batch,
        "registers": reg, "spills": spill,
        "occupancy": occupancy(reg, 256) if reg else None,
        "time_s": t_deq + t_gemm, "dequant_time_s": t_deq, "bound": "dequant+gemm", "fp16_time_s": t_gemm,
    }


def all_rows():
    regs = read_resources()
    rows = []
    for m, n in SHAPES:
        for cfg in CONFIGS:
            for b in DECODE_BATCHES:
                rows.append(predict_decode(m, n, cfg, b, regs))
            for b in GEMM_BATCHES:
                rows.append(predict_gemm_path(m, n, cfg, b, regs))
    return rows


def mb(x):
    return f"{x / 1e6:.2f}"


def render():
    regs = read_resources()
    out = ["Generated by `bench/gpu/perf_model.py --write docs/gpu-performance.md`; do not edit.", ""]
    out.append("### Bytes per layer: format payload vs GPU layout (no batch)")
    out.append("")
    out.append("| shape m x n | config | outliers | format MB | layout MB | layout / format | "
               "layout bits/weight |")
    out.append("|---|---|---:|---:|---:|---:|---:|")
    for m, n in SHAPES:
        for name, w, b1, b2, sb, share in CONFIGS:
            nnz = int(round(m * n * share))
            f = format_bytes(m, n, w, b1, b2, sb, nnz)
            lay = layout_bytes(m, n, w, b1, b2, sb, nnz)
            out.append(f"| {m} x {n} | {name} | {share * 100:.1f} % | {mb(f)} | {mb(lay)} | "
                       f"{lay / f:.4f} | {8.0 * lay / (m * n):.3f} |")
    out.append("")
    out.append("### Decode kernel: instructions per weight, registers, occupancy")
    out.append("")
    out.append("Per weight and thread (a warp instruction covers 32): `int` shift + lop3 (+ the "
               "split codes of w3), `fp` the weight's FMA and one FMA per (padded) sequence, `lsu` "
               "16-byte loads of codes and inputs, `other` statistics and loop overhead. FLOPs per "
               "weight = 2 x batch.")
    out.append("")
    out.append("| wbits | beta1 | batch (padded) | rows/warp | int | fp | lsu | other | total | "
               "registers | spills | occupancy |")
    out.append("|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    for w, b1 in [(3, 16), (3, 8), (4, 16)]:
        for b in DECODE_BATCHES:
            ops = decode_ops(w, b1, b)
            reg, spill = regs.get(("decode", w, padded_batch(b)), (None, None))
            occ = f"{occupancy(reg, DECODE_WARPS * 32) * 100:.0f} %" if reg else "?"
            out.append(f"| {w} | {b1} | {b} | {rows_per_warp(w, b)} | {ops['int']:.3f} | "
                       f"{ops['fp']:.0f} | {ops['lsu']:.3f} | {ops['other']:.3f} | "
                       f"{ops['total']:.2f} | {reg if reg else '?'} | "
                       f"{spill if spill is not None else '?'} | {occ} |")
    out.append("")
    out.append("Dequantize (GEMM path, fp16 output; `SpqrGpuDequantizeTilesKernel`, 256 threads):")
    out.append("")
    out.append("| wbits | beta1 | instructions/weight | registers | spills | occupancy |")
    out.append("|---:|---:|---:|---:|---:|---:|")
    for w, b1 in [(3, 16), (3, 8), (4, 16)]:
        row = predict_gemm_path(4096, 4096, ("", w, b1, 16, 3, 0.0), 32, regs)
        reg, spill = row["registers"], row["spills"]
        occ = f"{row['occupancy'] * 100:.0f} %" if reg else "?"
        out.append(f"| {w} | {b1} | {row['ops_per_weight']['total']:.2f} | "
                   f"{reg if reg else '?'} | {spill if spill is not None else '?'} | {occ} |")
    out.append("")
    out.append("### Predicted time per layer on an H200 (model, not measured)")
    out.append("")
    out.append("`must` = format payload + x + y; `reads` = DRAM bytes the path moves (layout, "
               "inputs, scratch, output; the GEMM path also writes and re-reads fp16 W). `bound` = "
               "the limiting term (dram, l2, l1, issue, fp, int, lsu pipe). fp16 = cuBLAS on fp16 "
               "weights at max(bytes / bandwidth, FLOPs / tensor peak). Launch overhead (~2-4 us per "
               "kernel, 2-4 kernels per call) is not included.")
    out.append("")
    out.append("| shape m x n | config | batch | path | must MB | reads MB | bound | "
               "predicted us | fp16 us | speed-up |")
    out.append("|---|---|---:|---|---:|---:|---|---:|---:|---:|")
    for row in all_rows():
        if row["config"] != "w3 16/16" and row["batch"] not in (1, 16):
            continue  # the other configs at the two decode design points only
        out.append(f"| {row['m']} x {row['n']} | {row['config']} | {row['batch']} | "
                   f"{row['kernel']} | {mb(row['must_read'])} | {mb(row['does_read'])} | "
                   f"{row['bound']} | {row['time_s'] * 1e6:.1f} | {row['fp16_time_s'] * 1e6:.1f} | "
                   f"{row['fp16_time_s'] / row['time_s']:.2f}x |")
    return "\n".join(out) + "\n"


def section_of(doc):
    text = open(doc).read()
    if BEGIN not in text or END not in text:
        sys.exit(f"{doc}: markers {BEGIN} / {END} missing")
    return text, text.index(BEGIN) + len(BEGIN), text.index(END)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--write")
    ap.add_argument("--check")
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()
    if args.json:
        json.dump(all_rows(), sys.stdout, indent=1)
        return
    body = "\n" + render()
    if args.write:
        text, a, b = section_of(args.write)
        open(args.write, "w").write(text[:a] + body + text[b:])
    elif args.check:
        text, a, b = section_of(args.check)
        if text[a:b] != body:
            sys.exit(f"{args.check}: the perf_model section is stale; run "
                     f"bench/gpu/perf_model.py --write {args.check}")
        print("perf_model: table up to date")
    else:
        sys.stdout.write(body)


if __name__ == "__main__":
    main()
