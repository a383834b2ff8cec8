#!/usr/bin/python3
"""Offline checks of tools/fetch_smollm2.py's conversion helpers (no download, no gguf package).

- unpermute_rows inverts llama.cpp's LlamaModel.permute (copied below from convert_hf_to_gguf.py)
  for q_proj (9 heads) and k_proj (3 KV heads) shapes, and is not the identity;
- to_bf16_bits rounds like torch's float32 -> bfloat16 conversion (nearest, ties to even);
- write_safetensors writes the safetensors layout (parsed back by hand: 8-byte header length,
  JSON header padded to 8 bytes, dtype, shape, offsets, the bits unchanged).
"""

import json
import os
import struct
import sys
import tempfile

import numpy as np

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..", "tools"))
import fetch_smollm2  # noqa: E402


def llama_cpp_permute(weights, n_head, n_head_kv):
    """convert_hf_to_gguf.py, LlamaModel.permute (llama.cpp, MIT)."""
    if n_head_kv is not None and n_head != n_head_kv:
        n_head = n_head_kv
    return (weights.reshape(n_head, 2, weights.shape[0] // n_head // 2, *weights.shape[1:])
            .swapaxes(1, 2)
            .reshape(weights.shape))


def main():
    failures = 0
    rng = np.random.default_rng(0)
    for rows, heads, kv in [(576, 9, 9), (192, 9, 3)]:
        w = rng.standard_normal((rows, 576)).astype(np.float32)
        permuted = llama_cpp_permute(w, heads, kv)
        back = fetch_smollm2.unpermute_rows(permuted, kv)
        if np.array_equal(permuted, w) or not np.array_equal(back, w):
            print(f"FAIL unpermute_rows for {rows} rows, {heads}/{kv} heads")
            failures += 1

    import torch
    x = np.concatenate([rng.standard_normal(100000).astype(np.float32) * 10,
                        np.array([0.0, -0.0, 1.0, 1.00390625, 1.01171875, 1.0 + 2**-9,
                                  1.0 + 3 * 2**-9, 3.4e38, -1e-40, 1e-45], dtype=np.float32)])
    ours = fetch_smollm2.to_bf16_bits(x)
    ref = torch.from_numpy(x).to(torch.bfloat16).view(torch.int16).numpy().view(np.uint16)
    if not np.array_equal(ours, ref):
        print(f"FAIL to_bf16_bits: {int((ours != ref).sum())} of {x.size} differ from torch")
        failures += 1

    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "t.safetensors")
        a = fetch_smollm2.to_bf16_bits(rng.standard_normal((3, 5)).astype(np.float32))
        b = fetch_smollm2.to_bf16_bits(rng.standard_normal(7).astype(np.float32))
        fetch_smollm2.write_safetensors(path, [("a", a), ("b", b)])
        with open(path, "rb") as f:
            data = f.read()
        n = struct.unpack("<Q", data[:8])[0]
        header = json.loads(data[8:8 + n])
        base = 8 + n
        for name, arr in [("a", a), ("b", b)]:
            entry = header[name]
            start, end = entry["data_offsets"]
            got = np.frombuffer(data[base + start:base + end], dtype="<u2").reshape(entry["shape"])
            if entry["dtype"] != "BF16" or not np.array_equal(got, arr):
                print(f"FAIL write_safetensors: tensor {name}")
                failures += 1
        if n % 8 != 0 or base + max(e["data_offsets"][1] for k, e in header.items()
                                    if k != "__metadata__") != len(data):
            print("FAIL write_safetensors: header padding or total size")
            failures += 1
    print("ok" if failures == 0 else f"{failures} failure(s)")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
