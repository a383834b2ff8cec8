#!/usr/bin/python3
"""Perplexity of an HF-layout model directory (as exported by train_model.py) on a text split, with
PyTorch: the reference number to set beside the engine's own.

Protocol (docs/spqr-method.md section 8): tokenize the whole text at once (no BOS), cut it into
non-overlapping windows of --seq-len tokens and drop the tail; each window's loss is the mean
cross-entropy of predicting tokens 1..L-1 from the prefix; ppl = exp(mean over windows).
--max-windows evaluates only the first N windows (for quick looks; say so when reporting).

Prints one JSON object: model, text, seq_len, windows, tokens_scored, mean_loss, ppl, seconds.

Usage: /usr/bin/python3 tools/train/eval_perplexity.py MODEL_DIR [--text .corpus/test.txt]
           [--seq-len 512] [--max-windows N] [--threads 1]
"""

import argparse
import json
import math
import os
import sys
import time

import numpy as np
import torch
import torch.nn.functional as F

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from hf_io import load_hf  # noqa: E402

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("model_dir")
    p.add_argument("--text", default=os.path.join(REPO, ".corpus", "test.txt"))
    p.add_argument("--seq-len", type=int, default=512)
    p.add_argument("--max-windows", type=int, default=0)
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--threads", type=int, default=1)
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    start = time.time()
    import sentencepiece as spm

    sp = spm.SentencePieceProcessor(model_file=os.path.join(args.model_dir, "tokenizer.model"))
    with open(args.text, encoding="utf-8") as f:
        ids = np.asarray(sp.encode(f.read()), dtype=np.int64)
    n = len(ids) // args.seq_len
    if args.max_windows:
        n = min(n, args.max_windows)
    if n == 0:
        sys.exit(f"error: {args.text} has fewer than {args.seq_len} tokens")
    windows = torch.from_numpy(ids[: n * args.seq_len]).view(n, args.seq_len)
    model = load_hf(args.model_dir).eval()
    losses = []
    with torch.no_grad():
        for i in range(0, n, args.batch):
            x = windows[i : i + args.batch]
            logits = model(x)
            loss = F.cross_entropy(logits[:, :-1].reshape(-1, logits.shape[-1]),
                                   x[:, 1:].reshape(-1), reduction="none")
            losses.extend(loss.view(x.shape[0], -1).mean(1).tolist())
    mean_loss = float(np.mean(losses))
    print(json.dumps({"model": os.path.abspath(args.model_dir), "text": os.path.abspath(args.text),
                      "seq_len": args.seq_len, "windows": n,
                      "tokens_total": int(len(ids)), "tokens_scored": n * (args.seq_len - 1),
                      "mean_loss": round(mean_loss, 5), "ppl": round(math.exp(mean_loss), 3),
                      "seconds": round(time.time() - start, 1)}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
