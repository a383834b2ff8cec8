#!/usr/bin/python3
"""An independent numpy reference of the LLaMA / Mistral / Qwen2 forward pass.

Reads a Hugging Face checkpoint directory directly (config.json plus model.safetensors, or
model.safetensors.index.json and its shards) with its own small safetensors reader, and computes
the logits of every position of a token sequence in float64. It shares no code with the engine:
it exists to check the engine's CPU backend (tests/tools/reference_forward_test.py).

    /usr/bin/python3 tools/reference_forward.py --model tests/data/test-model \
        --tokens 1,5,9,200 --out /tmp/ref_logits.npy
"""

import argparse
import json
import math
import os
import struct
import sys

import numpy as np

_DTYPES = {"F32": np.float32, "F16": np.float16, "BF16": np.uint16, "F64": np.float64}


def read_safetensors(path):
    """Returns {name: float64 array} for every tensor of one .safetensors file."""
    with open(path, "rb") as f:
        data = f.read()
    if len(data) < 8:
        raise ValueError(f"{path}: shorter than the 8-byte header length")
    (header_len,) = struct.unpack("<Q", data[:8])
    header = json.loads(data[8:8 + header_len])
    base = 8 + header_len
    tensors = {}
    for name, info in header.items():
        if name == "__metadata__":
            continue
        dtype = info["dtype"]
        if dtype not in _DTYPES:
            raise ValueError(f"{path}: tensor {name} has unsupported dtype {dtype}")
        start, end = info["data_offsets"]
        raw = np.frombuffer(data[base + start:base + end], dtype=_DTYPES[dtype])
        if dtype == "BF16":  # bf16 is the top half of an fp32
            raw = (raw.astype(np.uint32) << 16).view(np.float32)
        tensors[name] = raw.astype(np.float64).reshape(info["shape"])
    return tensors


def load_checkpoint(model_dir):
    index = os.path.join(model_dir, "model.safetensors.index.json")
    if os.path.exists(index):
        with open(index) as f:
            shards = sorted(set(json.load(f)["weight_map"].values()))
    else:
        shards = ["model.safetensors"]
    tensors = {}
    for shard in shards:
        tensors.update(read_safetensors(os.path.join(model_dir, shard)))
    return tensors


def rope_inv_freq(config, head_dim):
    """Inverse frequencies per transformers' rope init functions (default, linear, llama3)."""
    base = float(config.get("rope_theta", 10000.0))
    inv_freq = 1.0 / (base ** (np.arange(0, head_dim, 2, dtype=np.float64) / head_dim))
    scaling = config.get("rope_scaling") or {}
    kind = scaling.get("rope_type", scaling.get("type", "default"))
    if kind in ("default", None):
        return inv_freq
    factor = float(scaling["factor"])
    if kind == "linear":
        return inv_freq / factor
    if kind == "llama3":
        low = float(scaling.get("low_freq_factor", 1.0))
        high = float(scaling.get("high_freq_factor", 4.0))
        old_len = float(scaling["original_max_position_embeddings"])
        low_wavelen = old_len / low
        high_wavelen = old_len / high
        out = []
        for f in inv_freq:
            wavelen = 2 * math.pi / f
            if wavelen < high_wavelen:
                out.append(f)
            elif wavelen > low_wavelen:
                out.append(f / factor)
            else:
                smooth = (old_len / wavelen - low) / (high - low)
                out.append((1 - smooth) * f / factor + smooth * f)
        return np.array(out)
    raise ValueError(f"unsupported rope_scaling type {kind}")


def rms_norm(x, weight, eps):
    return x / np.sqrt(np.mean(x * x, axis=-1, keepdims=True) + eps) * weight


def apply_rope(x, cos, sin):
    """x: [seq, heads, head_dim]; rotate-half convention."""
    half = x.shape[-1] // 2
    rotated = np.concatenate([-x[..., half:], x[..., :half]], axis=-1)
    return x * cos[:, None, :] + rotated * sin[:, None, :]


def forward(model_dir, tokens):
    """Logits [len(tokens), vocab] (float64) of a causal forward over `tokens` from position 0."""
    with open(os.path.join(model_dir, "config.json")) as f:
        config = json.load(f)
    if config["model_type"] not in ("llama", "mistral", "qwen2"):
        raise ValueError(f"unsupported model_type {config['model_type']}")
    w = load_checkpoint(model_dir)
    hidden = config["hidden_size"]
    heads = config["num_attention_heads"]
    kv_heads = config.get("num_key_value_heads", heads)
    head_dim = config.get("head_dim") or hidden // heads
    eps = config.get("rms_norm_eps", 1e-6)
    layers = config["num_hidden_layers"]
    seq = len(tokens)

    inv_freq = rope_inv_freq(config, head_dim)
    angles = np.arange(seq, dtype=np.float64)[:, None] * inv_freq[None, :]
    cos = np.cos(np.concatenate([angles, angles], axis=-1))
    sin = np.sin(np.concatenate([angles, angles], axis=-1))
    mask = np.triu(np.full((seq, seq), -np.inf), k=1)

    def linear(x, prefix):
        y = x @ w[prefix + ".weight"].T
        if prefix + ".bias" in w:
            y = y + w[prefix + ".bias"]
        return y

    x = w["model.embed_tokens.weight"][np.asarray(tokens)]
    for i in range(layers):
        p = f"model.layers.{i}."
        h = rms_norm(x, w[p + "input_layernorm.weight"], eps)
        q = linear(h, p + "self_attn.q_proj").reshape(seq, heads, head_dim)
        k = linear(h, p + "self_attn.k_proj").reshape(seq, kv_heads, head_dim)
        v = linear(h, p + "self_attn.v_proj").reshape(seq, kv_heads, head_dim)
        q = apply_rope(q, cos, sin)
        k = apply_rope(k, cos, sin)
        group = heads // kv_heads
        k = np.repeat(k, group, axis=1)  # [seq, heads, head_dim]
        v = np.repeat(v, group, axis=1)
        scores = np.einsum("qhd,khd->hqk", q, k) / math.sqrt(head_dim) + mask
        scores = np.exp(scores - scores.max(axis=-1, keepdims=True))
        probs = scores / scores.sum(axis=-1, keepdims=True)
        attn = np.einsum("hqk,khd->qhd", probs, v).reshape(seq, heads * head_dim)
        x = x + linear(attn, p + "self_attn.o_proj")
        h = rms_norm(x, w[p + "post_attention_layernorm.weight"], eps)
        gate = linear(h, p + "mlp.gate_proj")
        up = linear(h, p + "mlp.up_proj")
        x = x + linear(gate / (1.0 + np.exp(-gate)) * up, p + "mlp.down_proj")
    x = rms_norm(x, w["model.norm.weight"], eps)
    lm_head = w.get("lm_head.weight")
    if lm_head is None or config.get("tie_word_embeddings", False):
        lm_head = w["model.embed_tokens.weight"]
    return x @ lm_head.T


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", required=True, help="Hugging Face checkpoint directory")
    parser.add_argument("--tokens", required=True, help="comma-separated token ids")
    parser.add_argument("--out", required=True, help="output .npy file, float32 [tokens, vocab]")
    args = parser.parse_args()
    tokens = [int(t) for t in args.tokens.split(",")]
    logits = forward(args.model, tokens)
    np.save(args.out, logits.astype(np.float32))
    return 0


if __name__ == "__main__":
    sys.exit(main())
