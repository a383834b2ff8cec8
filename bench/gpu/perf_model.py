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
ALL_BATCHES = [1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024]
DECODE_WARPS = 4  # kSpqrGpuDecodeWarps
CHUNK = 128  # kSpqrGpuChunkCols
# The fused tensor-core kernel (spqr_gpu_mma_kernel.cuh): kSpqrGpuMmaWarps warps of one m16 tile
# each, 8 NT tokens per block, K split to reach kSpqrGpuMmaTargetBlocks blocks.
MMA_WARPS = 8
MMA_TARGET_BLOCKS = 264
# mma.sync.m16n8k16 on Hopper: the dense fp16 peak is wgmma's; the warp-level mma.sync is commonly
# reported at about 60-65 % of it. An assumption, not a measurement: the device run settles it.
MMA_SYNC_SHARE = 0.6
SMEM_PER_SM = 228 * 1024
# Counted from the kernel's SASS (sm_90, this commit's build) by bench/gpu/sass_loop_count.py:
# one chunk-loop iteration of a lane (2 rows x 32 columns), branches as a mid-layer chunk takes
# them. Regenerate after changing spqr_gpu_mma_kernel.cuh (the script's docstring says how).
MMA_SASS = {  # (W, NT): chunk-loop instructions per lane and chunk (64 weights) for beta1 >= 32, 16, 8 (bilevel), 16 (fp16 statistics)
    (2, 1): (499, 548, 646, 482),
    (2, 2): (528, 577, 675, 506),
    (2, 4): (590, 639, 737, 567),
    (2, 8): (684, 730, 822, 666),
    (3, 1): (516, 565, 663, 498),
    (3, 2): (543, 592, 690, 523),
    (3, 4): (605, 654, 752, 582),
    (3, 8): (708, 757, 855, 687),
    (4, 1): (498, 547, 645, 480),
    (4, 2): (526, 575, 673, 504),
    (4, 4): (587, 636, 734, 564),
    (4, 8): (686, 732, 824, 664),
}

# The rule in spqr_gpu_linear.cuh (kSpqrGpuDecodeMaxBatch, kSpqrGpuMmaMaxBatch); render() checks
# it against the model's own per-shape choice and prints where they differ.
RULE_DECODE_MAX, RULE_MMA_MAX = 4, 128
# Launch cost per kernel for the rule check only (the tables leave it out): ~2 us (the doc's range).
LAUNCH_S = 2e-6


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


def mma_token_tiles(batch):
    """MmaTokenTiles in spqr_gpu_linear.cu: n8 tiles per block."""
    return 1 if batch <= 8 else 2 if batch <= 16 else 4 if batch <= 32 else 8


def mma_grid(m, n, batch):
    """MmaGridFor: (row blocks, token blocks, splits, chunks per split)."""
    chunks = (n + CHUNK - 1) // CHUNK
    rb = (m + 16 * MMA_WARPS - 1) // (16 * MMA_WARPS)
    t = 8 * mma_token_tiles(batch)
    tb = (batch + t - 1) // t
    splits = min((MMA_TARGET_BLOCKS + rb * tb - 1) // (rb * tb), chunks // 2, n // (32 * batch))
    splits = max(1, min(splits, chunks))
    cps = (chunks + splits - 1) // splits
    return rb, tb, (chunks + cps - 1) // cps, cps


def mma_ops(w, b1, sb, batch):
    """Thread instructions per weight of SpqrGpuMmaKernel for one token block: `total` from the
    SASS count (MMA_SASS), the pipe shares estimated from the code (a lane decodes 2 rows x 32
    columns = 64 weights of each 128-column chunk), `other` = the rest (statistics, ~25 per row
    and group to decode plus their loads per chunk; addressing, staging, barriers, loop)."""
    nt = mma_token_tiles(batch)
    straddle = 2.0 * 2 / 32 if w == 3 else 0.0  # w3: 2 of a lane's 32 codes straddle two words
    code_loads = {2: 1, 3: 3, 4: 1}[w]  # per row and chunk: 8-, 3 x 4-, 16-byte loads
    ops = {
        "int": 2.0 + straddle,  # shift, lop3 (f = 1 + q 2^-W)
        "fp": 1.0,  # the weight's FMA
        "cvt": 0.5,  # cvt.rn.f16x2.f32 per two weights
        # B fragments: one 8-byte shared load per k step and n8 tile (8 weights of the lane);
        # cp.async of the staged inputs (nt 8-byte units per thread and chunk); code loads
        "lsu": nt / 8.0 + nt / 64.0 + 2.0 * code_loads / 64,
        "mma": nt / 8.0,  # one warp mma per k step and n8 tile, per 32 x 8 weights
    }
    counts = MMA_SASS[(w, nt)]
    per_chunk = counts[3] if sb == 16 else counts[0] if b1 >= 32 else counts[1] if b1 == 16 \
        else counts[2]
    ops["total"] = per_chunk / 64.0
    ops["other"] = ops["total"] - sum(v for k, v in ops.items() if k != "total")
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
        m = re.search(r"SpqrGpuMmaKernel<(\d+), (\d+)>.* registers=(\d+) "
                      r"spill_stores=(\d+) spill_loads=(\d+)", line)
        if m:
            w, nt, reg, ss, sl = map(int, m.groups())
            regs[("mma", w, nt)] = (reg, ss + sl)
            continue
        m = re.search(r"SpqrGpuDequantizeTilesKernel<(\d+), __half>.* registers=(\d+) "
                      r"spill_stores=(\d+) spill_loads=(\d+)", line)
        if m:
            w, reg, ss, sl = map(int, m.groups())
            regs[("dequant", w)] = (reg, ss + sl)
    return regs


def occupancy(regs, threads, smem=0):
    """Resident warps / 64 on sm_90 (occupancy calculator: registers allocated per warp in units of
    256, 64K registers, at most 32 blocks and 64 warps per SM, 228 KiB shared memory per SM of
    which 1 KiB per block is reserved)."""
    warps = threads // 32
    per_warp = math.ceil(regs * 32 / 256) * 256
    blocks = min((65536 // per_warp) // warps, 32, 64 // warps)
    if smem:
        blocks = min(blocks, SMEM_PER_SM // (smem + 1024))
    return blocks * warps / 64.0


def mma_smem(batch):
    """Static shared memory of SpqrGpuMmaKernel: two stages of 8 NT tokens x 33 8-byte units."""
    return 2 * 8 * mma_token_tiles(batch) * 33 * 8


def predict_mma(m, n, cfg, batch, regs):
    name, w, b1, b2, sb, share = cfg
    nnz = int(round(m * n * share))
    rb, tb, splits, cps = mma_grid(m, n, batch)
    t = 8 * mma_token_tiles(batch)
    lay = layout_bytes(m, n, w, b1, b2, sb, nnz)
    must = format_bytes(m, n, w, b1, b2, sb, nnz) + batch * n * 4 + batch * m * 4
    partial = splits * batch * m * 4 if splits > 1 else 0
    # DRAM: the layout once (a layer's token blocks run close together and the H200's 50 MB L2
    # holds the codes between them), x read and fp16 x written by the gather and read back, the
    # split partial sums written and read once, y written.
    dram = lay + batch * n * 4 + 2 * batch * n * 2 + 2 * partial + batch * m * 4
    # L2: the layout per token block, every block's staged inputs (all its tokens x its columns).
    l2 = dram + (tb - 1) * lay + rb * tb * t * n * 2
    ops = mma_ops(w, b1, sb, batch)
    weights = m * n * tb  # weights decoded (once per token block)
    clk = SMS * CLOCK
    tm = {
        "dram": dram / DRAM_BW,
        "l2": l2 / L2_BW,
        "issue": weights / 32 * ops["total"] / (ISSUE * clk),
        "fp": weights / 32 * ops["fp"] / (FP_PIPE * clk),
        "int": weights / 32 * ops["int"] / (INT_PIPE * clk),
        "lsu": weights / 32 * ops["lsu"] / (LSU_PIPE * clk),
        "tensor": 2.0 * m * n * tb * t / (MMA_SYNC_SHARE * TENSOR_F16),
    }
    bound = max(tm, key=tm.get)
    reg, spill = regs.get(("mma", w, mma_token_tiles(batch)), (None, None))
    return {
        "kernel": "mma", "config": name, "m": m, "n": n, "batch": batch, "nnz": nnz,
        "must_read": must, "does_read": dram, "l2_bytes": l2, "ops_per_weight": ops,
        "flops_per_weight": 2 * batch, "registers": reg, "spills": spill,
        "occupancy": occupancy(reg, 32 * MMA_WARPS, mma_smem(batch)) if reg else None,
        "splits": splits, "token_blocks": tb,
        "time_s": tm[bound], "bound": bound, "fp16_time_s": fp16_time(m, n, batch),
    }


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


def paths_at(m, n, cfg, batch, regs):
    """Predictions of every path that takes `batch`, by path name."""
    out = {"mma": predict_mma(m, n, cfg, batch, regs),
           "dequant+cuBLAS": predict_gemm_path(m, n, cfg, batch, regs)}
    if batch <= 16:
        out["decode"] = predict_decode(m, n, cfg, batch, regs)
    return out


def kernels_of(row):
    """Kernel launches of a call: decode = gather + decode; mma = gather + mma (+ the split
    reduce); dequantize + cuBLAS = tiles + outliers + gather + GEMM."""
    if row["kernel"] == "decode":
        return 2
    if row["kernel"] == "mma":
        return 3 if row["splits"] > 1 else 2
    return 4


def rule_path(batch):
    """ChooseSpqrGpuPath for the kernels' configurations (spqr_gpu_linear.cu)."""
    if batch <= RULE_DECODE_MAX:
        return "decode"
    return "mma" if batch <= RULE_MMA_MAX else "dequant+cuBLAS"


def all_rows():
    regs = read_resources()
    rows = []
    for m, n in SHAPES:
        for cfg in CONFIGS:
            for b in ALL_BATCHES:
                rows.extend(paths_at(m, n, cfg, b, regs).values())
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
    out.append("### Tensor-core kernel: instructions per weight, registers, occupancy")
    out.append("")
    out.append("`SpqrGpuMmaKernel<W, NT>`, 256 threads, per weight decoded and thread, for one "
               "token block of 8 NT tokens (a batch of B tokens decodes each weight ceil(B / 8 NT) "
               "times). `total` is counted from the SASS (`bench/gpu/sass_loop_count.py`: one "
               "chunk-loop iteration, 64 weights per lane); the shares are read off the code: "
               "`int` shift + lop3, `fp` the weight's FMA, `cvt` fp32 -> fp16x2, `lsu` B-fragment "
               "shared loads + cp.async staging + code loads, `mma` warp MMAs (per 32 weights), "
               "`other` the rest: statistics (~25 instructions per row and group to decode, their "
               "loads once per chunk and row), addressing, staging, barriers and the loop.")
    out.append("")
    out.append("| wbits | beta1 | batch (NT) | int | fp | cvt | lsu | mma | other | total | "
               "registers | spills | smem KiB | occupancy |")
    out.append("|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    for w, b1 in [(3, 16), (3, 8), (4, 16)]:
        for b in [8, 16, 32, 64]:
            ops = mma_ops(w, b1, 3, b)
            nt = mma_token_tiles(b)
            reg, spill = regs.get(("mma", w, nt), (None, None))
            occ = f"{occupancy(reg, 32 * MMA_WARPS, mma_smem(b)) * 100:.0f} %" if reg else "?"
            out.append(f"| {w} | {b1} | {b} ({nt}) | {ops['int']:.3f} | {ops['fp']:.0f} | "
                       f"{ops['cvt']:.1f} | {ops['lsu']:.3f} | {ops['mma']:.3f} | "
                       f"{ops['other']:.3f} | {ops['total']:.2f} | {reg if reg else '?'} | "
                       f"{spill if spill is not None else '?'} | {mma_smem(b) / 1024:.1f} | {occ} |")
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
    out.append("Every path that takes the batch: decode (batch <= 16), the fused tensor-core "
               "kernel (`mma`), dequantize + cuBLAS. `must` = format payload + x + y; `reads` = "
               "DRAM bytes the chosen path moves (layout, inputs, scratch, partial sums, output). "
               "`bound` = the chosen path's limiting term (dram, l2, l1, issue, fp, int, lsu pipe, "
               "tensor = mma.sync at "
               f"{MMA_SYNC_SHARE * 100:.0f} % of the fp16 peak). fp16 = cuBLAS on fp16 weights at "
               "max(bytes / bandwidth, FLOPs / tensor peak). `rule` = the path ChooseSpqrGpuPath "
               f"picks (decode up to batch {RULE_DECODE_MAX}, tensor cores up to {RULE_MMA_MAX}, "
               "then dequantize + cuBLAS); speed-up = fp16 / rule. Launch overhead (~2-4 us per "
               "kernel, 2-4 kernels per call) is not included.")
    out.append("")
    out.append("| shape m x n | config | batch | decode us | mma us | dequant+cuBLAS us | fp16 us | "
               "rule | must MB | reads MB | bound | speed-up |")
    out.append("|---|---|---:|---:|---:|---:|---:|---|---:|---:|---|---:|")
    shown = [1, 2, 4, 8, 16, 32, 128, 256, 1024]
    mismatches = []
    for m, n in SHAPES:
        for cfg in CONFIGS:
            for b in ALL_BATCHES:
                p = paths_at(m, n, cfg, b, regs)

                def with_launches(k):
                    return p[k]["time_s"] + LAUNCH_S * kernels_of(p[k])

                best = min(p, key=with_launches)
                chosen = p[rule_path(b)]
                if with_launches(rule_path(b)) > 1.05 * with_launches(best):
                    mismatches.append(f"{m} x {n} {cfg[0]} batch {b}: rule {rule_path(b)} "
                                      f"{with_launches(rule_path(b)) * 1e6:.1f} us, {best} "
                                      f"{with_launches(best) * 1e6:.1f} us")
                if b not in shown or (cfg[0] != "w3 16/16" and b not in (1, 16, 128, 1024)):
                    continue

                def us(k):
                    return f"{p[k]['time_s'] * 1e6:.1f}" if k in p else "-"

                out.append(f"| {m} x {n} | {cfg[0]} | {b} | {us('decode')} | {us('mma')} | "
                           f"{us('dequant+cuBLAS')} | {chosen['fp16_time_s'] * 1e6:.1f} | "
                           f"{rule_path(b)} | {mb(chosen['must_read'])} | "
                           f"{mb(chosen['does_read'])} | {chosen['bound']} | "
                           f"{chosen['fp16_time_s'] / chosen['time_s']:.2f}x |")
    out.append("")
    out.append(f"Rule check over {len(SHAPES)} shapes x {len(CONFIGS)} configs x batches "
               f"{', '.join(map(str, ALL_BATCHES))}, each path charged {LAUNCH_S * 1e6:.0f} us "
               "per kernel it launches: the rule's path is predicted more than 5 % slower than "
               f"the fastest path in {len(mismatches)} cases"
               + (":" if mismatches else "."))
    for line in mismatches:
        out.append(f"- {line}")
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
