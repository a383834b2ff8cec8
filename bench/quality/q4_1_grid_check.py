#!/usr/bin/python3
"""Checks that a converted SmolLM2 checkpoint still sits on its upstream Q4_1 grid, and where.

Q4_1 (docs/models.md) stores each block of 32 consecutive weights along the input dimension as
w = d*q + m, q in 0..15, with the block's min and max at levels 0 and 15. If our
[out_features, in_features] bf16 tensors keep that layout, every group of 32 columns starting at a
multiple of 32 satisfies (w - min) / ((max - min) / 15) ~ integer (off only by the bf16 rounding),
while groups shifted by 16 columns do not. A min-max 4-bit quantizer with groups aligned like the
first can then reproduce the weights; docs/quality.md's diagnostic rows rely on this.

Prints, per projection kind and over all decoder layers, the mean and max distance of the grid
coordinate from the nearest integer for aligned and for shifted groups.

  /usr/bin/python3 bench/quality/q4_1_grid_check.py models/.cache/smollm2-135m-instruct
"""
import json
import struct
import sys

import numpy as np


def main():
    if len(sys.argv) != 2:
        sys.exit(__doc__.split("\n\n")[-1])
    path = sys.argv[1].rstrip("/") + "/model.safetensors"
    with open(path, "rb") as f:
        n = struct.unpack("<Q", f.read(8))[0]
        header = json.loads(f.read(n))
        base = 8 + n
        stats = {}
        for name, t in sorted(header.items()):
            if not name.endswith("proj.weight") or t["dtype"] != "BF16":
                continue
            a, b = t["data_offsets"]
            f.seek(base + a)
            w = (np.frombuffer(f.read(b - a), dtype=np.uint16).astype(np.uint32) << 16).view(
                np.float32).reshape(t["shape"])
            kind = name.split(".")[-2]
            for off, label in ((0, "aligned"), (16, "shifted by 16")):
                cols = (w.shape[1] - off) // 32 * 32
                g = w[:, off:off + cols].reshape(w.shape[0], -1, 32)
                lo, hi = g.min(-1, keepdims=True), g.max(-1, keepdims=True)
                q = (g - lo) / np.where(hi > lo, (hi - lo) / 15, 1)
                e = np.abs(q - np.round(q))
                s = stats.setdefault((kind, label), [0.0, 0, 0.0])
                s[0] += float(e.sum())
                s[1] += e.size
                s[2] = max(s[2], float(e.max()))
    print("projection  groups of 32         mean |q - round(q)|  max")
    for (kind, label), (total, count, mx) in sorted(stats.items()):
        print(f"{kind:10s}  {label:19s}  {total / count:19.4f}  {mx:.3f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
