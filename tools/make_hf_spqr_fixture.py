#!/usr/bin/env python3
"""Makes tests/data/hf-spqr/authors_k_proj.safetensors: one 64 x 128 layer packed by the SpQR
authors' own code, and their own decoder's output for it (issue 15, section 3).

Their packing (`tensor_compress_interleaved`) and host decoder (`dequantize_compressed`) are C++
in inference_lib/src/spqr_quant/inference_kernels/spqr_cuda.cpp of github.com/Vahe1994/SpQR; they
use torch only for tensor plumbing and cuda_fp16.h for the half arithmetic. This script copies the
three host-side pieces out of a local clone (nothing of it is committed here), compiles them with
nvcc as host code behind a minimal stand-in for torch::Tensor, feeds them random legacy-format
inputs (int8 codes, fp16 second-order values, CSR outliers as in convert_legacy_model_format.py)
and stores their outputs:
  layer.dense_weights I64, layer.row_offsets I32, layer.col_vals I32, layer.in_perm I32
      (the transformers layout; col_vals merged and in_perm packed with the same formulas as their
      sparse_util.merge_col_val and QuantizedLinear.from_legacy),
  layer.authors_dequant F16 [64, 128]: dequantize_compressed's output (permuted column order).

  git clone https://github.com/Vahe1994/SpQR /tmp/SpQR   # or any checkout / git dir
  /usr/bin/python3 tools/make_hf_spqr_fixture.py --spqr /tmp/SpQR \
      --out tests/data/hf-spqr/authors_k_proj.safetensors
The committed fixture was made from commit 543d10e of that repository with nvcc 13.0.
"""
import argparse
import json
import os
import struct
import subprocess
import tempfile

import numpy as np

SRC = "inference_lib/src/spqr_quant/inference_kernels/"

STUB = r"""
#pragma once
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <vector>
namespace torch {
enum ScalarType { kChar, kHalf, kInt, kLong };
struct Tensor {
  void* p = nullptr;
  std::vector<int64_t> s;
  ScalarType t = kChar;
  void* data_ptr() const { return p; }
  template <class T> T* data_ptr() const { return static_cast<T*>(p); }
  std::vector<int64_t> sizes() const { return s; }
  ScalarType dtype() const { return t; }
};
}  // namespace torch
#define TORCH_CHECK(c, msg) if (!(c)) { std::fprintf(stderr, "%s\n", msg); std::abort(); }
"""

MAIN = r"""
#include <fstream>
int main(int argc, char** argv) {
  std::ifstream in(argv[1], std::ios::binary);
  int32_t m, n, nnz;
  in.read((char*)&m, 4); in.read((char*)&n, 4); in.read((char*)&nnz, 4);
  const int tm = m / 16, tn = n / 16;
  std::vector<int8_t> W(m * n), Ws(m * tn), Wz(m * tn);
  std::vector<uint16_t> ss(tm * tn), sz(tm * tn), zs(tm * tn), zz(tm * tn);
  std::vector<int32_t> ro(m + 1), cv(nnz);
  in.read((char*)W.data(), W.size()); in.read((char*)Ws.data(), Ws.size());
  in.read((char*)Wz.data(), Wz.size());
  for (auto* v : {&ss, &sz, &zs, &zz}) in.read((char*)v->data(), v->size() * 2);
  in.read((char*)ro.data(), ro.size() * 4); in.read((char*)cv.data(), cv.size() * 4);
  std::vector<uint64_t> dense(tm * tn * 16, 0);
  std::vector<uint16_t> deq(m * n, 0);
  using torch::Tensor;
  Tensor tW{W.data(), {m * n}, torch::kChar}, tWs{Ws.data(), {m * tn}, torch::kChar},
      tWz{Wz.data(), {m * tn}, torch::kChar}, tss{ss.data(), {tm * tn}, torch::kHalf},
      tsz{sz.data(), {tm * tn}, torch::kHalf}, tzs{zs.data(), {tm * tn}, torch::kHalf},
      tzz{zz.data(), {tm * tn}, torch::kHalf}, tro{ro.data(), {m + 1}, torch::kInt},
      tcv{cv.data(), {nnz}, torch::kInt}, tout{dense.data(), {tm * tn * 16}, torch::kLong},
      tdeq{deq.data(), {m, n}, torch::kHalf};
  tensor_compress_interleaved(m, n, 3, tW, 16, 16, tWs, tWz, tss, tsz, tzs, tzz, tro, tro, tcv,
                              tcv, /*csr*/ 0, tout);
  dequantize_compressed(m, n, 3, 16, 16, tout, tro, tcv, nnz, tdeq);
  std::ofstream out(argv[2], std::ios::binary);
  out.write((char*)dense.data(), dense.size() * 8);
  out.write((char*)deq.data(), deq.size() * 2);
  return 0;
}
"""


def read_source(repo, path):
    if os.path.isfile(os.path.join(repo, path)):
        return open(os.path.join(repo, path)).read()
    return subprocess.run(["git", "--git-dir", repo, "show", "HEAD:" + path], check=True,
                          capture_output=True, text=True).stdout


def between(text, start, end):
    a = text.index(start)
    return text[a:text.index(end, a)]


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--spqr", required=True, help="checkout or git dir of Vahe1994/SpQR")
    ap.add_argument("--out", required=True)
    ap.add_argument("--nvcc", default="nvcc")
    args = ap.parse_args()
    cpp = read_source(args.spqr, SRC + "spqr_cuda.cpp")
    pieces = [between(cpp, "// Function to convert an integer to half-precision",
                      "void torch_mul_timer("),
              between(cpp, "void dequantize_compressed(", "void spqr_mul_timer("),
              between(cpp, "enum class SparseCompressionStrategy", "void spqr_mul_fused(")]
    m, n = 64, 128
    tm, tn = m // 16, n // 16
    rng = np.random.default_rng(1515)
    with tempfile.TemporaryDirectory() as tmp:
        open(os.path.join(tmp, "common.cuh"), "w").write(read_source(args.spqr, SRC + "common.cuh"))
        open(os.path.join(tmp, "torch_stub.h"), "w").write(STUB)
        open(os.path.join(tmp, "harness.cu"), "w").write(
            '#include "common.cuh"\n#include "torch_stub.h"\n#include <cuda_fp16.h>\n'
            "#include <algorithm>\n" + "\n".join(pieces) + MAIN)
        exe = os.path.join(tmp, "harness")
        subprocess.run([args.nvcc, "-std=c++20", "-O1", "-o", exe, os.path.join(tmp, "harness.cu")],
                       check=True)
        # Legacy-format inputs (their naming: W_s_s scale of scales, W_s_z zero of scales, ...),
        # flattened as convert_legacy_model_format.load_legacy_tensor does: codes [m][n], first
        # order [group][row], second order [group][row tile].
        W = rng.integers(0, 8, size=(m, n)).astype(np.int8)
        Ws = rng.integers(0, 8, size=(tn, m)).astype(np.int8)
        Wz = rng.integers(0, 8, size=(tn, m)).astype(np.int8)
        ss = rng.uniform(0.001, 0.004, size=(tn, tm)).astype(np.float16)
        sz = rng.uniform(-1.5, -0.5, size=(tn, tm)).astype(np.float16)
        zs = rng.uniform(0.3, 0.7, size=(tn, tm)).astype(np.float16)
        zz = rng.uniform(-0.5, 0.5, size=(tn, tm)).astype(np.float16)
        mask = rng.random((m, n)) < 0.03
        rows, cols = np.nonzero(mask)
        vals = rng.normal(0, 0.05, size=len(rows)).astype(np.float16)
        ro = np.concatenate([[0], np.cumsum(np.bincount(rows, minlength=m))]).astype(np.int32)
        # sparse_util.merge_col_val: (values as int16 << 16) | (col as int16), to int32
        cv = ((vals.view(np.int16).astype(np.int64) << 16)
              | cols.astype(np.int16).astype(np.int64)).astype(np.int32)
        perm = rng.permutation(n).astype(np.uint16)
        in_perm = ((perm[1::2].astype(np.uint32) << 16) | perm[0::2]).view(np.int32)
        blob = struct.pack("<3i", m, n, len(cv)) + b"".join(
            a.tobytes() for a in (W, Ws, Wz, ss, sz, zs, zz, ro, cv))
        open(os.path.join(tmp, "in.bin"), "wb").write(blob)
        subprocess.run([exe, os.path.join(tmp, "in.bin"), os.path.join(tmp, "out.bin")], check=True)
        raw = open(os.path.join(tmp, "out.bin"), "rb").read()
    dense = np.frombuffer(raw[:tm * tn * 16 * 8], dtype=np.int64)
    deq = np.frombuffer(raw[tm * tn * 16 * 8:], dtype=np.float16).reshape(m, n)
    tensors = [("layer.dense_weights", "I64", dense), ("layer.row_offsets", "I32", ro),
               ("layer.col_vals", "I32", cv), ("layer.in_perm", "I32", in_perm),
               ("layer.authors_dequant", "F16", deq)]
    header, off, blobs = {"__metadata__": {"made_by": "tools/make_hf_spqr_fixture.py"}}, 0, []
    for name, dt, arr in tensors:  # 8-byte tensors first: all offsets aligned
        b = np.ascontiguousarray(arr).tobytes()
        header[name] = {"dtype": dt, "shape": list(arr.shape), "data_offsets": [off, off + len(b)]}
        blobs.append(b)
        off += len(b)
    h = json.dumps(header).encode()
    h += b" " * ((8 - len(h) % 8) % 8)
    os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
    with open(args.out, "wb") as f:
        f.write(struct.pack("<Q", len(h)) + h + b"".join(blobs))
    print(f"wrote {args.out}: {m}x{n}, {len(cv)} outliers")


if __name__ == "__main__":
    main()
