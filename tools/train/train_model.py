#!/usr/bin/python3
"""Trains the reference LLaMA model on the corpus (device-agnostic: CUDA if present, else CPU).

Data: the train / validation splits of tools/corpus/build_corpus.py, tokenized with the tokenizer of
tools/train/train_tokenizer.py (cached as uint16 token files in the run directory, keyed by the
sha256 of text + tokenizer). Each text is encoded in ~1 MB pieces cut at document boundaries.
Training samples are random windows of --seq-len tokens drawn with a seeded generator; half of them
start with BOS (so the model works both for prompts, which the server starts with BOS, and for the
perplexity protocol's raw windows). Validation loss: mean cross-entropy over the first
--val-windows non-overlapping raw windows of the validation split (the perplexity protocol of
docs/spqr-method.md section 8, no BOS).

Stopping: at --max-steps, or after --max-hours of training wall time when given (the cosine then
follows whichever comes first, see lr_at).

Precision: bf16 autocast on CUDA, fp32 on CPU. AdamW (betas 0.9/0.95, weight decay 0.1 on matrices
and embeddings, not on norms), linear warmup then cosine decay to 10% of --lr at --max-steps,
gradient clipping at 1.0.

Outputs in --run-dir: ckpt.pt (model, optimizer, step, data-generator state; written atomically
every --ckpt-minutes and at the end; training resumes from it automatically), log.jsonl (one JSON
object per --log-every steps: step, tokens, lr, loss, val_loss (when evaluated), wall_s, step_s),
and --export-dir: the HF export (config.json, model.safetensors bf16, tokenizer.model,
generation_config.json, training_state.json) every --export-minutes and at the end.

Usage: /usr/bin/python3 tools/train/train_model.py [--corpus .corpus] [--run-dir .corpus/run]
           [--export-dir .corpus/export] [--max-steps N] [--batch B] [--threads 1] ...
"""

import argparse
import hashlib
import json
import math
import os
import sys
import time

import numpy as np
import torch
import torch.nn.functional as F

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from hf_io import export_hf  # noqa: E402
from llama import LlamaConfig, LlamaForCausalLM  # noqa: E402

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
CHUNK_BYTES = 1 << 20


def sha256_file(path):
    with open(path, "rb") as f:
        return hashlib.sha256(f.read()).hexdigest()


def encode_text(sp, text):
    """Encodes `text` in ~1 MB pieces cut at document boundaries ("\\n\\n")."""
    pieces, start = [], 0
    while start < len(text):
        end = min(len(text), start + CHUNK_BYTES)
        if end < len(text):
            cut = text.rfind("\n\n", start, end)
            end = cut + 2 if cut > start else end
        pieces.append(np.asarray(sp.encode(text[start:end]), dtype=np.uint16))
        start = end
    return np.concatenate(pieces)


def load_tokens(text_path, tokenizer_path, cache_dir):
    """uint16 token ids of text_path, cached in cache_dir."""
    key = hashlib.sha256((sha256_file(text_path) + sha256_file(tokenizer_path)).encode()).hexdigest()
    cache = os.path.join(cache_dir, f"tokens-{os.path.basename(text_path)}-{key[:16]}.npy")
    if os.path.exists(cache):
        return np.load(cache)
    import sentencepiece as spm

    sp = spm.SentencePieceProcessor(model_file=tokenizer_path)
    if sp.vocab_size() > 65535:
        raise ValueError("vocabulary does not fit uint16")
    with open(text_path, encoding="utf-8") as f:
        tokens = encode_text(sp, f.read())
    np.save(cache + ".tmp.npy", tokens)
    os.replace(cache + ".tmp.npy", cache)
    return tokens


def lr_at(step, wall_s, args):
    """Warmup, then cosine over the progress made: the larger of the step fraction and, with
    --max-hours, the wall-time fraction (so a run on a shared CPU still anneals before its time
    budget ends, however fast its steps turn out to be)."""
    if step < args.warmup:
        return args.lr * (step + 1) / args.warmup
    progress = (step - args.warmup) / max(1, args.max_steps - args.warmup)
    if args.max_hours:
        progress = max(progress, wall_s / (args.max_hours * 3600))
    progress = min(1.0, progress)
    return args.lr * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * progress)))


def sample_batch(tokens, rng, args, bos_id, device):
    """[batch, seq+1] windows; the first half of the rows begin with BOS."""
    starts = rng.integers(0, len(tokens) - args.seq_len - 1, size=args.batch)
    rows = np.stack([tokens[s : s + args.seq_len + 1].astype(np.int64) for s in starts])
    n_bos = args.batch // 2
    rows[:n_bos, 1:] = rows[:n_bos, :-1]
    rows[:n_bos, 0] = bos_id
    return torch.from_numpy(rows).to(device)


def autocast(device):
    if device.type == "cuda":
        return torch.autocast("cuda", dtype=torch.bfloat16)
    return torch.autocast("cpu", enabled=False)


@torch.no_grad()
def validation_loss(model, val_tokens, args, device):
    model.eval()
    n = min(args.val_windows, len(val_tokens) // args.seq_len)
    windows = torch.from_numpy(val_tokens[: n * args.seq_len].astype(np.int64))
    windows = windows.view(n, args.seq_len).to(device)
    total = 0.0
    for i in range(0, n, args.batch):
        x = windows[i : i + args.batch]
        with autocast(device):
            logits = model(x)
        loss = F.cross_entropy(logits[:, :-1].reshape(-1, logits.shape[-1]), x[:, 1:].reshape(-1),
                               reduction="none").view(x.shape[0], -1).mean(1)
        total += loss.sum().item()
    model.train()
    return total / n


def make_optimizer(model, args):
    decay = [p for n, p in model.named_parameters() if p.dim() >= 2]
    no_decay = [p for n, p in model.named_parameters() if p.dim() < 2]
    return torch.optim.AdamW([{"params": decay, "weight_decay": args.weight_decay},
                              {"params": no_decay, "weight_decay": 0.0}],
                             lr=args.lr, betas=(0.9, 0.95), eps=1e-8)


def save_checkpoint(path, model, opt, step, tokens_seen, rng, wall_s):
    state = {"model": model.state_dict(), "optimizer": opt.state_dict(), "step": step,
             "tokens": tokens_seen, "rng": rng.bit_generator.state, "wall_s": wall_s,
             "config": model.cfg.__dict__}
    torch.save(state, path + ".tmp")
    os.replace(path + ".tmp", path)


def parse_args(argv):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--corpus", default=os.path.join(REPO, ".corpus"))
    p.add_argument("--tokenizer", default=None, help="default CORPUS/tokenizer/tokenizer.model")
    p.add_argument("--train-text", default=None, help="default CORPUS/train.txt")
    p.add_argument("--val-text", default=None, help="default CORPUS/validation.txt")
    p.add_argument("--run-dir", default=None, help="default CORPUS/run")
    p.add_argument("--export-dir", default=None, help="default CORPUS/export")
    p.add_argument("--vocab", type=int, default=None, help="default: the tokenizer's size")
    p.add_argument("--hidden", type=int, default=256)
    p.add_argument("--intermediate", type=int, default=768)
    p.add_argument("--layers", type=int, default=6)
    p.add_argument("--heads", type=int, default=4)
    p.add_argument("--kv-heads", type=int, default=2)
    p.add_argument("--seq-len", type=int, default=512)
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--max-steps", type=int, default=4000)
    p.add_argument("--max-hours", type=float, default=0.0,
                   help="also stop (and finish the cosine) after this much training wall time")
    p.add_argument("--lr", type=float, default=2e-3)
    p.add_argument("--warmup", type=int, default=100)
    p.add_argument("--weight-decay", type=float, default=0.1)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=1, help="torch CPU threads")
    p.add_argument("--device", default=None, help="default cuda if available else cpu")
    p.add_argument("--log-every", type=int, default=10)
    p.add_argument("--eval-every", type=int, default=100)
    p.add_argument("--val-windows", type=int, default=32)
    p.add_argument("--ckpt-minutes", type=float, default=5.0)
    p.add_argument("--export-minutes", type=float, default=15.0)
    args = p.parse_args(argv)
    c = args.corpus
    args.tokenizer = args.tokenizer or os.path.join(c, "tokenizer", "tokenizer.model")
    args.train_text = args.train_text or os.path.join(c, "train.txt")
    args.val_text = args.val_text or os.path.join(c, "validation.txt")
    args.run_dir = args.run_dir or os.path.join(c, "run")
    args.export_dir = args.export_dir or os.path.join(c, "export")
    return args


def main(argv=None):
    args = parse_args(sys.argv[1:] if argv is None else argv)
    torch.set_num_threads(args.threads)
    device = torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    os.makedirs(args.run_dir, exist_ok=True)
    torch.manual_seed(args.seed)

    import sentencepiece as spm

    sp = spm.SentencePieceProcessor(model_file=args.tokenizer)
    cfg = LlamaConfig(vocab_size=args.vocab or sp.vocab_size(), hidden_size=args.hidden,
                      intermediate_size=args.intermediate, num_hidden_layers=args.layers,
                      num_attention_heads=args.heads, num_key_value_heads=args.kv_heads,
                      max_position_embeddings=args.seq_len, bos_token_id=sp.bos_id(),
                      eos_token_id=sp.eos_id())
    if cfg.vocab_size < sp.vocab_size():
        sys.exit(f"error: --vocab {cfg.vocab_size} < tokenizer size {sp.vocab_size()}")
    t0 = time.time()
    train_tokens = load_tokens(args.train_text, args.tokenizer, args.run_dir)
    val_tokens = load_tokens(args.val_text, args.tokenizer, args.run_dir)
    print(f"tokens: train {len(train_tokens)}, validation {len(val_tokens)} "
          f"({time.time() - t0:.0f} s)", flush=True)

    model = LlamaForCausalLM(cfg).to(device)
    opt = make_optimizer(model, args)
    rng = np.random.default_rng(args.seed)
    step, tokens_seen, wall_before = 0, 0, 0.0
    ckpt_path = os.path.join(args.run_dir, "ckpt.pt")
    if os.path.exists(ckpt_path):
        state = torch.load(ckpt_path, map_location=device)
        if state["config"] != cfg.__dict__:
            sys.exit(f"error: {ckpt_path} has config {state['config']}, not {cfg.__dict__}")
        model.load_state_dict(state["model"])
        opt.load_state_dict(state["optimizer"])
        step, tokens_seen, wall_before = state["step"], state["tokens"], state["wall_s"]
        rng.bit_generator.state = state["rng"]
        print(f"resumed from {ckpt_path} at step {step}", flush=True)
    print(f"model: {model.num_parameters()} parameters, {cfg}; device {device}, "
          f"{torch.get_num_threads()} threads", flush=True)

    log = open(os.path.join(args.run_dir, "log.jsonl"), "a")
    start = time.time()
    last_ckpt = last_export = start
    interval_loss, interval_steps, interval_start = 0.0, 0, time.time()
    val_loss = None

    def wall():
        return wall_before + time.time() - start

    def export():
        export_hf(model, args.tokenizer, args.export_dir, "bfloat16",
                  {"step": step, "tokens": tokens_seen, "wall_s": round(wall(), 1),
                   "val_loss": val_loss, "seq_len": args.seq_len})

    def done():
        return step >= args.max_steps or (args.max_hours and wall() >= args.max_hours * 3600)

    model.train()
    while not done():
        lr = lr_at(step, wall(), args)
        for group in opt.param_groups:
            group["lr"] = lr
        batch = sample_batch(train_tokens, rng, args, cfg.bos_token_id, device)
        with autocast(device):
            logits = model(batch[:, :-1])
        loss = F.cross_entropy(logits.reshape(-1, logits.shape[-1]), batch[:, 1:].reshape(-1))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        step += 1
        tokens_seen += args.batch * args.seq_len
        interval_loss += loss.item()
        interval_steps += 1

        evaluated = step % args.eval_every == 0 or done()
        if evaluated:
            val_loss = validation_loss(model, val_tokens, args, device)
        if step % args.log_every == 0 or evaluated:
            now = time.time()
            rec = {"step": step, "tokens": tokens_seen, "lr": round(lr, 7),
                   "loss": round(interval_loss / interval_steps, 4),
                   "step_s": round((now - interval_start) / interval_steps, 3),
                   "wall_s": round(wall(), 1)}
            if evaluated:
                rec["val_loss"] = round(val_loss, 4)
                rec["val_ppl"] = round(math.exp(val_loss), 2)
            log.write(json.dumps(rec) + "\n")
            log.flush()
            print(json.dumps(rec), flush=True)
            interval_loss, interval_steps, interval_start = 0.0, 0, time.time()
        if time.time() - last_ckpt > args.ckpt_minutes * 60 or done():
            save_checkpoint(ckpt_path, model, opt, step, tokens_seen, rng, wall())
            last_ckpt = time.time()
        if time.time() - last_export > args.export_minutes * 60 or done():
            export()
            last_export = time.time()
    if not os.path.exists(args.export_dir):
        export()
    log.close()
    print(f"finished at step {step}, {tokens_seen} tokens, {wall():.0f} s", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
