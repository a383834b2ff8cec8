#!/usr/bin/env python3
"""End-to-end logits of the CUDA backend on a GPU, against independent references.

Runs on the device machine (tools/gpu-check.sh bundles it), where PyTorch and transformers are
installed but none of our Debian libraries:

  * dense checkpoints (models/reference, tests/data/test-model): `spqr-dump-logits --backend cuda`
    against transformers' LlamaForCausalLM in float32 (TF32 off) on the same safetensors;
  * SpQR checkpoints (the reference model quantized by spqr-quantize, which transformers cannot
    read): `--backend cuda` against `--backend cpu` of the same binary.

Each case feeds fixed token ids (no tokenizer on either side) as chunked prefill plus decode steps
through a scrambled paged KV block table, and compares every position's logits:

  relative error = max |cuda - reference| / max |reference|  <=  BOUND

plus argmax agreement at positions whose top-2 margin is clear (> 4x the max abs difference).
BOUND = 0.02 is the CUDA backend's stated tolerance (tests/cuda_emu/cuda_backend_e2e_test.cc:
16-bit activations into cuBLAS and the SpQR kernels, fp32 accumulation; measured 0.002-0.012 under
the CPU harness). Writes one JSON file (--out) with every number; exits 1 if any case fails.

  python3 tools/gpu_logits_check.py --dump-logits BIN --out logits.json \
      --vs-transformers models/reference tests/data/test-model --vs-cpu /path/to/reference-spqr

Under the CPU harness (spqr-dump-logits-emu, ctest gpu_logits_check_emu) the same script checks
itself and the backend without a GPU.
"""

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time

import numpy as np

BOUND = 0.02


def token_cases(vocab):
    """(label, ids, prompt, chunk): a short prompt, and a longer one in ragged chunks."""
    rng = np.random.default_rng(20261204)
    short = [int(t) for t in rng.integers(3, vocab, size=9)]
    long = [int(t) for t in rng.integers(3, vocab, size=70)]
    return [("short", short, 6, 6), ("long", long, 61, 17)]


def run_engine(dump_logits, model, ids, prompt, chunk, backend, out):
    subprocess.run([dump_logits, "--model", model, "--tokens", ",".join(map(str, ids)),
                    "--prompt", str(prompt), "--chunk", str(chunk), "--block-size", "16",
                    "--backend", backend, "--out", out,
                    # The CPU side is the reference: its exact kernels (fp32 activations), not
                    # the faster defaults that round activations (the CUDA backend ignores this).
                    "--spqr-kernel", "exact", "--dense-kernel", "exact"], check=True)
    return np.load(out).astype(np.float64)


def transformers_logits(model_dir, ids, device):
    import torch
    from transformers import LlamaForCausalLM
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False
    model = LlamaForCausalLM.from_pretrained(model_dir, torch_dtype=torch.float32).to(device)
    model.eval()
    with torch.no_grad():
        out = model(torch.tensor([ids], device=device)).logits[0]
    return out.double().cpu().numpy()


def compare(cuda, ref):
    diff = float(np.abs(cuda - ref).max())
    rel = diff / float(np.abs(ref).max())
    top2 = np.sort(ref, axis=1)[:, -2:]
    clear = (top2[:, 1] - top2[:, 0]) > 4 * diff
    agree = bool(np.all(cuda.argmax(1)[clear] == ref.argmax(1)[clear]))
    return {"max_abs_diff": diff, "relative_error": rel, "bound": BOUND,
            "clear_positions": int(clear.sum()), "positions": int(ref.shape[0]),
            "argmax_agrees_at_clear_positions": agree, "ok": rel <= BOUND and agree}


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dump-logits", required=True)
    parser.add_argument("--out", required=True)
    parser.add_argument("--vs-transformers", nargs="*", default=[], metavar="DIR",
                        help="dense HF checkpoints: CUDA backend vs transformers")
    parser.add_argument("--vs-cpu", nargs="*", default=[], metavar="DIR",
                        help="any checkpoint we load (SpQR too): CUDA backend vs CPU backend")
    args = parser.parse_args()

    result = {"bound": BOUND, "cases": [], "env": {}}
    try:
        import torch
        import transformers
        result["env"] = {"torch": torch.__version__, "transformers": transformers.__version__,
                         "torch_cuda": torch.cuda.is_available()}
        device = "cuda" if torch.cuda.is_available() else "cpu"
        if device == "cuda":
            result["env"]["device"] = torch.cuda.get_device_name(0)
    except ImportError as e:
        result["env"] = {"error": f"no torch/transformers: {e}"}
        device = None

    failures = 0
    with tempfile.TemporaryDirectory(prefix="spqr-gpu-logits-") as tmp:
        jobs = ([(m, "transformers") for m in args.vs_transformers]
                + [(m, "cpu") for m in args.vs_cpu])
        for model, reference in jobs:
            with open(os.path.join(model, "config.json")) as f:
                vocab = json.load(f)["vocab_size"]
            for label, ids, prompt, chunk in token_cases(vocab):
                case = {"model": os.path.basename(os.path.normpath(model)), "prompt": label,
                        "tokens": len(ids), "prefill": prompt, "chunk": chunk,
                        "reference": reference}
                start = time.time()
                try:
                    cuda = run_engine(args.dump_logits, model, ids, prompt, chunk, "cuda",
                                      os.path.join(tmp, "cuda.npy"))
                    if reference == "transformers":
                        if device is None:
                            raise RuntimeError(result["env"]["error"])
                        ref = transformers_logits(model, ids, device)
                    else:
                        ref = run_engine(args.dump_logits, model, ids, prompt, chunk, "cpu",
                                         os.path.join(tmp, "cpu.npy"))
                    if cuda.shape != ref.shape:
                        raise RuntimeError(f"shape {cuda.shape} vs reference {ref.shape}")
                    case.update(compare(cuda, ref))
                except (subprocess.CalledProcessError, RuntimeError, OSError) as e:
                    case.update({"ok": False, "error": str(e)})
                case["seconds"] = round(time.time() - start, 2)
                failures += not case["ok"]
                result["cases"].append(case)
                print(("ok  " if case["ok"] else "FAIL") + " " + json.dumps(case), flush=True)
    result["ok"] = failures == 0 and bool(result["cases"])
    with open(args.out, "w") as f:
        json.dump(result, f, indent=1)
    print(f"gpu_logits_check: {len(result['cases']) - failures}/{len(result['cases'])} cases ok")
    return 0 if result["ok"] else 1


if __name__ == "__main__":
    sys.exit(main())
