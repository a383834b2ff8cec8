#!/usr/bin/python3
"""Checks tools/make_test_model.py and the committed tests/data/test-model/.

  reproducible  regenerates the default model into a temp dir and requires every file to be
                byte-identical (sha256) to the committed one, with the same set of files.
  variants      generates each flag variant (dtypes, tied embeddings, shards, qwen2 biases, rope
                scaling, sizes) into temp dirs and checks them with an independent safetensors
                reader: tensor names, dtypes, shapes, the shard index, config fields, and that a
                numpy forward pass gives finite, non-degenerate logits.

Usage: check_test_model.py reproducible|variants [--repo ROOT]
"""

import argparse
import hashlib
import json
import os
import struct
import subprocess
import sys
import tempfile

import numpy as np

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def fail(msg):
    print("FAIL: " + msg, file=sys.stderr)
    sys.exit(1)


def sha256(path):
    with open(path, "rb") as f:
        return hashlib.sha256(f.read()).hexdigest()


def generate(repo, out, *flags):
    cmd = [sys.executable, os.path.join(repo, "tools", "make_test_model.py"), "--out", out, *flags]
    subprocess.run(cmd, check=True)


def check_reproducible(repo):
    committed = os.path.join(repo, "tests", "data", "test-model")
    with tempfile.TemporaryDirectory() as tmp:
        generate(repo, tmp)
        want, got = sorted(os.listdir(committed)), sorted(os.listdir(tmp))
        if want != got:
            fail(f"file sets differ: committed {want}, regenerated {got}")
        for name in want:
            a, b = sha256(os.path.join(committed, name)), sha256(os.path.join(tmp, name))
            if a != b:
                fail(f"{name}: committed sha256 {a} != regenerated {b}")
            print(f"ok {name} {a}")


# ---- independent reader + reference forward --------------------------------------------------

NP_DTYPES = {"F32": np.dtype("<f4"), "F16": np.dtype("<f2"), "BF16": np.dtype("<u2")}


def read_safetensors(path):
    with open(path, "rb") as f:
        blob = f.read()
    (n,) = struct.unpack("<Q", blob[:8])
    if (8 + n) % 8:
        fail(f"{path}: data start {8 + n} is not 8-byte aligned")
    header = json.loads(blob[8 : 8 + n])
    data = blob[8 + n :]
    out, end = {}, 0
    for name in sorted(k for k in header if k != "__metadata__"):
        e = header[name]
        b, t = e["data_offsets"]
        if b != end:
            fail(f"{path}: {name} starts at {b}, expected {end} (sorted, contiguous)")
        end = t
        arr = np.frombuffer(data[b:t], dtype=NP_DTYPES[e["dtype"]])
        if e["dtype"] == "BF16":
            arr = (arr.astype(np.uint32) << 16).view(np.float32)
        out[name] = (e["dtype"], arr.astype(np.float32).reshape(e["shape"]))
    if end != len(data):
        fail(f"{path}: {len(data) - end} trailing bytes")
    return out


def load_dir(d):
    index = os.path.join(d, "model.safetensors.index.json")
    if not os.path.exists(index):
        return read_safetensors(os.path.join(d, "model.safetensors"))
    with open(index) as f:
        weight_map = json.load(f)["weight_map"]
    tensors = {}
    for shard in sorted(set(weight_map.values())):
        part = read_safetensors(os.path.join(d, shard))
        for name in part:
            if weight_map.get(name) != shard:
                fail(f"{name} is in {shard} but the index says {weight_map.get(name)}")
        tensors.update(part)
    if set(tensors) != set(weight_map):
        fail(f"index and shards disagree: {sorted(set(tensors) ^ set(weight_map))}")
    return tensors


def rms_norm(x, w, eps):
    return x / np.sqrt(np.mean(x * x, axis=-1, keepdims=True) + eps) * w


def rope_inv_freq(cfg):
    hd = cfg["head_dim"]
    inv = 1.0 / cfg["rope_theta"] ** (np.arange(0, hd, 2) / hd)
    rs = cfg.get("rope_scaling")
    if rs and rs["rope_type"] == "linear":
        inv = inv / rs["factor"]
    elif rs and rs["rope_type"] == "llama3":
        orig = rs["original_max_position_embeddings"]
        low_wl, high_wl = orig / rs["low_freq_factor"], orig / rs["high_freq_factor"]
        wl = 2 * np.pi / inv
        smooth = (orig / wl - rs["low_freq_factor"]) / (rs["high_freq_factor"] - rs["low_freq_factor"])
        scaled = np.where(wl > low_wl, inv / rs["factor"], inv)
        mid = (wl <= low_wl) & (wl >= high_wl)
        inv = np.where(mid, (1 - smooth) * inv / rs["factor"] + smooth * inv, scaled)
    return inv


def rotate_half(x):
    h = x.shape[-1] // 2
    return np.concatenate([-x[..., h:], x[..., :h]], axis=-1)


def forward(cfg, t, ids):
    """Plain HF LLaMA forward (rotate-half RoPE, GQA, SwiGLU) in float64; returns logits."""
    w = {k: v[1].astype(np.float64) for k, v in t.items()}
    n, hd, nh, nkv = len(ids), cfg["head_dim"], cfg["num_attention_heads"], cfg["num_key_value_heads"]
    eps = cfg["rms_norm_eps"]
    ang = np.outer(np.arange(n), rope_inv_freq(cfg))
    cos, sin = np.cos(np.concatenate([ang, ang], -1)), np.sin(np.concatenate([ang, ang], -1))
    x = w["model.embed_tokens.weight"][ids]
    mask = np.triu(np.full((n, n), -np.inf), 1)
    for i in range(cfg["num_hidden_layers"]):
        p = f"model.layers.{i}."
        h = rms_norm(x, w[p + "input_layernorm.weight"], eps)
        qkv = []
        for proj, heads in (("q_proj", nh), ("k_proj", nkv), ("v_proj", nkv)):
            y = h @ w[p + f"self_attn.{proj}.weight"].T
            if p + f"self_attn.{proj}.bias" in w:
                y = y + w[p + f"self_attn.{proj}.bias"]
            qkv.append(y.reshape(n, heads, hd).transpose(1, 0, 2))
        q, k, v = qkv
        q = q * cos + rotate_half(q) * sin
        k = k * cos + rotate_half(k) * sin
        k, v = np.repeat(k, nh // nkv, 0), np.repeat(v, nh // nkv, 0)
        s = q @ k.transpose(0, 2, 1) / np.sqrt(hd) + mask
        s = np.exp(s - s.max(-1, keepdims=True))
        s /= s.sum(-1, keepdims=True)
        a = (s @ v).transpose(1, 0, 2).reshape(n, nh * hd)
        x = x + a @ w[p + "self_attn.o_proj.weight"].T
        h = rms_norm(x, w[p + "post_attention_layernorm.weight"], eps)
        g = h @ w[p + "mlp.gate_proj.weight"].T
        u = h @ w[p + "mlp.up_proj.weight"].T
        x = x + (g / (1 + np.exp(-g)) * u) @ w[p + "mlp.down_proj.weight"].T
    x = rms_norm(x, w["model.norm.weight"], eps)
    head = w["model.embed_tokens.weight"] if cfg["tie_word_embeddings"] else w["lm_head.weight"]
    return x @ head.T


def expected_names(cfg):
    names = {"model.embed_tokens.weight", "model.norm.weight"}
    if not cfg["tie_word_embeddings"]:
        names.add("lm_head.weight")
    for i in range(cfg["num_hidden_layers"]):
        p = f"model.layers.{i}."
        names |= {p + "input_layernorm.weight", p + "post_attention_layernorm.weight"}
        for proj in ("q_proj", "k_proj", "v_proj", "o_proj"):
            names.add(p + f"self_attn.{proj}.weight")
            if cfg.get("attention_bias") and proj != "o_proj":
                names.add(p + f"self_attn.{proj}.bias")
        for proj in ("gate_proj", "up_proj", "down_proj"):
            names.add(p + f"mlp.{proj}.weight")
    return names


def check_model_dir(d, want_dtype, label):
    with open(os.path.join(d, "config.json")) as f:
        cfg = json.load(f)
    t = load_dir(d)
    if set(t) != expected_names(cfg):
        fail(f"{label}: tensor names differ: {sorted(set(t) ^ expected_names(cfg))}")
    for name, (dtype, arr) in t.items():
        if dtype != want_dtype:
            fail(f"{label}: {name} has dtype {dtype}, expected {want_dtype}")
    h, hd = cfg["hidden_size"], cfg["head_dim"]
    shapes = {"model.embed_tokens.weight": (cfg["vocab_size"], h),
              "model.layers.0.self_attn.q_proj.weight": (cfg["num_attention_heads"] * hd, h),
              "model.layers.0.self_attn.k_proj.weight": (cfg["num_key_value_heads"] * hd, h),
              "model.layers.0.self_attn.o_proj.weight": (h, cfg["num_attention_heads"] * hd),
              "model.layers.0.mlp.down_proj.weight": (h, cfg["intermediate_size"])}
    for name, shape in shapes.items():
        if t[name][1].shape != shape:
            fail(f"{label}: {name} has shape {t[name][1].shape}, expected {shape}")
    import sentencepiece as spm
    sp = spm.SentencePieceProcessor(model_file=os.path.join(d, "tokenizer.model"))
    if (sp.vocab_size(), sp.unk_id(), sp.bos_id(), sp.eos_id(), sp.pad_id()) != (512, 0, 1, 2, -1):
        fail(f"{label}: unexpected tokenizer ids")
    text = "This License applies to any program or other work."
    ids = [1] + sp.encode(text)
    if sp.decode(ids[1:]) != text:
        fail(f"{label}: tokenizer round trip failed")
    logits = forward(cfg, t, ids)
    if not np.all(np.isfinite(logits)):
        fail(f"{label}: non-finite logits")
    std = float(logits.std(axis=-1).mean())
    distinct_argmax = len(set(logits.argmax(-1).tolist()))
    if not (0.3 < std < 10.0) or distinct_argmax < 3:
        fail(f"{label}: degenerate logits (std {std:.3f}, {distinct_argmax} distinct argmax)")
    print(f"ok {label}: {len(t)} tensors, logit std {std:.3f}, {distinct_argmax} distinct argmax")
    return cfg


VARIANTS = [
    ("default", [], "BF16"),
    ("f16-tied", ["--dtype", "f16", "--tie-embeddings"], "F16"),
    ("f32-3shards", ["--dtype", "f32", "--shards", "3"], "F32"),
    ("qwen2", ["--model-type", "qwen2", "--rope-scaling", "linear"], "BF16"),
    ("llama-attention-bias", ["--attention-bias"], "BF16"),
    ("mistral-mha-llama3", ["--model-type", "mistral", "--kv-heads", "4", "--rope-scaling", "llama3",
                            "--layers", "3", "--hidden", "64", "--intermediate", "160",
                            "--vocab", "640", "--max-pos", "256", "--seed", "7"], "BF16"),
]


def check_variants(repo):
    check_model_dir(os.path.join(repo, "tests", "data", "test-model"), "BF16", "committed")
    with tempfile.TemporaryDirectory() as tmp:
        for label, flags, dtype in VARIANTS:
            d = os.path.join(tmp, label)
            generate(repo, d, *flags)
            cfg = check_model_dir(d, dtype, label)
            if "bias" in label or label == "qwen2":
                if not cfg.get("attention_bias"):
                    fail(f"{label}: config.json lacks attention_bias: true")
                if "model.layers.0.self_attn.q_proj.bias" not in load_dir(d):
                    fail(f"{label}: no q_proj bias")
        # The layer-0 tensors of a variant with the same seed and sizes equal the default's, and
        # a different seed changes them.
        a = load_dir(os.path.join(tmp, "default"))
        b = load_dir(os.path.join(tmp, "f32-3shards"))
        name = "model.layers.0.mlp.up_proj.weight"
        if np.abs(a[name][1] - b[name][1]).max() > 0.01:
            fail("same-seed tensors differ between dtypes beyond rounding")
        c = os.path.join(tmp, "seed1")
        generate(repo, c, "--seed", "1")
        if np.array_equal(load_dir(c)[name][1], a[name][1]):
            fail("--seed 1 produced the same weights as --seed 0")
        # Bad flags are rejected.
        r = subprocess.run([sys.executable, os.path.join(repo, "tools", "make_test_model.py"),
                            "--out", os.path.join(tmp, "bad"), "--vocab", "100"],
                           capture_output=True, text=True)
        if r.returncode == 0 or "--vocab" not in r.stderr:
            fail("--vocab 100 was not rejected with a message naming --vocab")


def main():
    p = argparse.ArgumentParser()
    p.add_argument("mode", choices=["reproducible", "variants"])
    p.add_argument("--repo", default=REPO)
    args = p.parse_args()
    if args.mode == "reproducible":
        check_reproducible(args.repo)
    else:
        check_variants(args.repo)
    print("PASS")


if __name__ == "__main__":
    main()
