#!/usr/bin/python3
"""Checks tools/train/ (the reference-model trainer) without the corpus.

1. The PyTorch LLaMA of tools/train/llama.py, loaded from tests/data/test-model/ with hf_io.load_hf,
   gives the same logits as the independent numpy HF reference forward of check_test_model.py
   (rotate-half RoPE, GQA head mapping, RMSNorm, SwiGLU).
2. A tiny training run on tools/test_model_text.txt with the test model's tokenizer: the loss
   falls, log.jsonl has the documented fields, the checkpoint resumes (a second invocation with a
   larger --max-steps continues from the saved step), and the HF export reloads and matches the
   numpy reference forward too, and tools/train/eval_perplexity.py reproduces the trainer's last
   validation loss from the export.
"""

import json
import math
import os
import subprocess
import sys
import tempfile

import numpy as np

try:
    import torch
except ImportError:  # the trainer is optional tooling: its test skips (ctest SKIP_RETURN_CODE 77)
    print("SKIP: python3-torch is not installed (apt-get install python3-torch)")
    sys.exit(77)

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(os.path.dirname(HERE))
sys.path.insert(0, HERE)
sys.path.insert(0, os.path.join(REPO, "tools", "train"))
import check_test_model  # noqa: E402
import hf_io  # noqa: E402


def fail(msg):
    print("FAIL: " + msg, file=sys.stderr)
    sys.exit(1)


def compare_with_reference(model_dir, ids, label):
    with open(os.path.join(model_dir, "config.json")) as f:
        cfg = json.load(f)
    want = check_test_model.forward(cfg, check_test_model.load_dir(model_dir), ids)
    model = hf_io.load_hf(model_dir)
    with torch.no_grad():
        got = model(torch.tensor([ids])).numpy()[0]
    err = float(np.abs(got - want).max())
    scale = float(np.abs(want).max())
    if not err < 1e-4 * max(1.0, scale):
        fail(f"{label}: torch logits differ from the numpy reference by {err} (scale {scale})")
    print(f"ok {label}: max |torch - reference| = {err:.2e} (logit scale {scale:.2f})")


def train(tmp, max_steps):
    cmd = [sys.executable, os.path.join(REPO, "tools", "train", "train_model.py"),
           "--tokenizer", os.path.join(REPO, "tests", "data", "test-model", "tokenizer.model"),
           "--train-text", os.path.join(REPO, "tools", "test_model_text.txt"),
           "--val-text", os.path.join(REPO, "tools", "test_model_text.txt"),
           "--run-dir", os.path.join(tmp, "run"), "--export-dir", os.path.join(tmp, "export"),
           "--hidden", "64", "--intermediate", "128", "--layers", "2", "--heads", "4",
           "--kv-heads", "2", "--seq-len", "64", "--batch", "4", "--lr", "3e-3", "--warmup", "5",
           "--max-steps", str(max_steps), "--eval-every", "20", "--log-every", "10",
           "--val-windows", "8", "--device", "cpu"]
    r = subprocess.run(cmd, capture_output=True, text=True)
    if r.returncode != 0:
        fail(f"train_model.py failed:\n{r.stdout}\n{r.stderr}")
    return r.stdout


def main():
    ids = [1, 5, 300, 17, 260, 480, 33, 2, 99, 128, 400, 7]
    compare_with_reference(os.path.join(REPO, "tests", "data", "test-model"), ids, "test-model")
    with tempfile.TemporaryDirectory() as tmp:
        train(tmp, 40)
        out = train(tmp, 60)
        if "resumed from" not in out or "at step 40" not in out:
            fail(f"second run did not resume at step 40:\n{out}")
        with open(os.path.join(tmp, "run", "log.jsonl")) as f:
            recs = [json.loads(line) for line in f]
        for key in ("step", "tokens", "lr", "loss", "step_s", "wall_s"):
            if any(key not in r for r in recs):
                fail(f"log.jsonl record without {key}")
        vals = [r["val_loss"] for r in recs if "val_loss" in r]
        if [r["step"] for r in recs if "val_loss" in r] != [20, 40, 60]:
            fail(f"validation steps {[r['step'] for r in recs if 'val_loss' in r]}")
        # ln(512) = 6.24 is the loss of a uniform guess; 60 steps get well below it.
        if not (vals[-1] < math.log(512) - 1.0 and recs[-1]["loss"] < recs[0]["loss"] - 0.5):
            fail(f"loss did not fall: val {vals}, train {[r['loss'] for r in recs]}")
        print(f"ok training: val loss {vals}")
        export = os.path.join(tmp, "export")
        with open(os.path.join(export, "training_state.json")) as f:
            state = json.load(f)
        if state["step"] != 60 or state["tokens"] != 60 * 4 * 64:
            fail(f"training_state.json: {state}")
        compare_with_reference(export, ids, "export")
        # eval_perplexity.py on the export reproduces the trainer's last validation loss (same
        # windows; the export's weights are bf16-rounded, hence the tolerance).
        r = subprocess.run([sys.executable, os.path.join(REPO, "tools", "train",
                                                         "eval_perplexity.py"), export,
                            "--text", os.path.join(REPO, "tools", "test_model_text.txt"),
                            "--seq-len", "64", "--max-windows", "8"],
                           capture_output=True, text=True)
        if r.returncode != 0:
            fail(f"eval_perplexity.py failed: {r.stderr}")
        ev = json.loads(r.stdout)
        if ev["windows"] != 8 or abs(ev["mean_loss"] - vals[-1]) > 0.05:
            fail(f"eval_perplexity {ev} disagrees with the trainer's val loss {vals[-1]}")
        print(f"ok eval_perplexity: loss {ev['mean_loss']} vs trainer {vals[-1]}")
    print("PASS")


if __name__ == "__main__":
    main()
