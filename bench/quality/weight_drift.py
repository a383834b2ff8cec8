#!/usr/bin/python3
"""How far a model trained by tools/train/train_model.py has moved from its random initialization:
for every matrix, |W - W0| / |W0|, |W| / |W0| and the cosine between W and W0, where W0 is the
initialization train_model.py starts from (torch.manual_seed(seed), then LlamaForCausalLM(config)).
A diagnostic for docs/quality.md: a matrix whose cosine with its init is high still carries much of
its random initial component. One JSON object per matrix on stdout.

Usage: /usr/bin/python3 bench/quality/weight_drift.py MODEL_DIR [--seed 0] > OUT.jsonl
"""

import argparse
import json
import os
import sys

import torch

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..", "tools",
                                "train"))
from hf_io import load_hf  # noqa: E402
from llama import LlamaForCausalLM  # noqa: E402


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("model_dir")
    p.add_argument("--seed", type=int, default=0, help="train_model.py's --seed")
    args = p.parse_args()
    trained = load_hf(args.model_dir)
    torch.manual_seed(args.seed)
    init = LlamaForCausalLM(trained.cfg)
    sd0 = init.state_dict()
    for name, w in trained.state_dict().items():
        if w.dim() < 2:
            continue
        w, w0 = w.float(), sd0[name].float()
        print(json.dumps({
            "tensor": name,
            "moved": round((w - w0).norm().item() / w0.norm().item(), 4),
            "norm_ratio": round(w.norm().item() / w0.norm().item(), 4),
            "cosine_with_init": round(torch.nn.functional.cosine_similarity(
                w.flatten(), w0.flatten(), dim=0).item(), 4)}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
