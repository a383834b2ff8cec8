#!/usr/bin/python3
"""Writes a small random-weight LLaMA-family checkpoint in Hugging Face layout, deterministically.

The output directory gets:
  config.json             model_type llama|mistral|qwen2, architectures, torch_dtype, sizes, rope
  generation_config.json  bos_token_id 1, eos_token_id 2
  model.safetensors       (or model-0000i-of-0000N.safetensors + model.safetensors.index.json)
  tokenizer.model         SentencePiece BPE, 512 pieces, byte fallback, unk=0 bos=1 eos=2, no pad
or, with --hf-tokenizer tokenizer.json [--chat-template T.jinja] (a ChatML byte-level BPE model):
  tokenizer.json          the given file, copied
  tokenizer_config.json   eos_token <|im_end|>, pad_token <|endoftext|>, no bos, the chat template
  config.json / generation_config.json with bos 0 and eos [0] (<|endoftext|>)

Everything is byte-identical for identical arguments: the safetensors files are written here with
numpy + json (no safetensors package), each tensor's values come from its own generator seeded with
(seed, sha256(tensor name)), so a variant with more layers shares the tensors of a smaller one, and
the tokenizer is trained single-threaded from an in-memory iterator (so no file path lands in the
model proto).

Vocabulary: the tokenizer always has 512 pieces (it is trained once on tools/test_model_text.txt, a
copy of the GPL-3 text). --vocab may be larger than 512; the extra embedding / lm_head rows are ids
the tokenizer never produces, like the padded vocabularies of real checkpoints. --vocab < 512 is an
error.

Default (what tests/data/test-model/ holds): vocab 512, hidden 128, intermediate 384, 2 layers,
4 heads, 2 KV heads (GQA), head_dim 32, max_position_embeddings 512, rms_norm_eps 1e-5,
rope_theta 10000, bf16, untied lm_head.

Weight scales are chosen so the logits are not degenerate: embeddings and lm_head ~N(0, 0.1^2)
(after the final RMSNorm each hidden element is ~1, so logits have std ~0.1*sqrt(hidden) ~ 1.1),
q/k/v/gate/up ~N(0, 0.1^2) (attention scores of std ~1, so attention is neither uniform nor
one-hot), o/down ~N(0, 0.05^2) (residual stream grows slowly), norm weights 1 + N(0, 0.1^2), q/k/v
biases (qwen2) ~N(0, 0.1^2).

Usage: /usr/bin/python3 tools/make_test_model.py --out DIR [options]   (see --help)
"""

import argparse
import hashlib
import io
import json
import os
import struct
import sys

import numpy as np

TOKENIZER_VOCAB = 512
DEFAULT_TEXT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "test_model_text.txt")

ARCHITECTURES = {
    "llama": "LlamaForCausalLM",
    "mistral": "MistralForCausalLM",
    "qwen2": "Qwen2ForCausalLM",
}
TORCH_DTYPES = {"bf16": "bfloat16", "f16": "float16", "f32": "float32"}
SAFETENSORS_DTYPES = {"bf16": "BF16", "f16": "F16", "f32": "F32"}
ELEMENT_BYTES = {"bf16": 2, "f16": 2, "f32": 4}


# ---------------------------------------------------------------------------------------------
# Tensors
# ---------------------------------------------------------------------------------------------


def tensor_rng(seed, name):
    """A generator private to one tensor, so tensors do not depend on each other's order."""
    digest = hashlib.sha256(name.encode("utf-8")).digest()
    words = [int.from_bytes(digest[i : i + 4], "little") for i in range(0, 16, 4)]
    return np.random.Generator(np.random.PCG64(np.random.SeedSequence([seed] + words)))


def normal(seed, name, shape, std, mean=0.0):
    values = tensor_rng(seed, name).standard_normal(size=shape, dtype=np.float64)
    return (mean + std * values).astype(np.float32)


def f32_to_bf16_bits(values):
    """Round-to-nearest-even float32 -> bfloat16, returned as uint16 bit patterns."""
    bits = np.ascontiguousarray(values, dtype=np.float32).view(np.uint32).astype(np.uint64)
    rounding = ((bits >> 16) & 1) + 0x7FFF
    return ((bits + rounding) >> 16).astype(np.uint16)


def encode(values, dtype):
    """float32 array -> little-endian bytes in the checkpoint dtype."""
    if dtype == "bf16":
        return f32_to_bf16_bits(values).astype("<u2").tobytes()
    if dtype == "f16":
        return values.astype("<f2").tobytes()
    return values.astype("<f4").tobytes()


def build_tensors(args):
    """Returns {name: float32 array} in HF LLaMA naming."""
    h, inter, hd = args.hidden, args.intermediate, args.head_dim
    q_out, kv_out = args.heads * hd, args.kv_heads * hd
    s = args.seed
    t = {}
    t["model.embed_tokens.weight"] = normal(s, "model.embed_tokens.weight", (args.vocab, h), 0.1)
    for i in range(args.layers):
        p = f"model.layers.{i}."
        t[p + "input_layernorm.weight"] = normal(s, p + "input_layernorm.weight", (h,), 0.1, 1.0)
        t[p + "post_attention_layernorm.weight"] = normal(
            s, p + "post_attention_layernorm.weight", (h,), 0.1, 1.0
        )
        for proj, out_features, std in (("q_proj", q_out, 0.1), ("k_proj", kv_out, 0.1),
                                        ("v_proj", kv_out, 0.1), ("o_proj", h, 0.05)):
            in_features = q_out if proj == "o_proj" else h
            name = p + "self_attn." + proj + ".weight"
            t[name] = normal(s, name, (out_features, in_features), std)
            if args.attention_bias and proj != "o_proj":
                bname = p + "self_attn." + proj + ".bias"
                t[bname] = normal(s, bname, (out_features,), 0.1)
        for proj, shape, std in (("gate_proj", (inter, h), 0.1), ("up_proj", (inter, h), 0.1),
                                 ("down_proj", (h, inter), 0.05)):
            name = p + "mlp." + proj + ".weight"
            t[name] = normal(s, name, shape, std)
    t["model.norm.weight"] = normal(s, "model.norm.weight", (h,), 0.1, 1.0)
    if not args.tie_embeddings:
        t["lm_head.weight"] = normal(s, "lm_head.weight", (args.vocab, h), 0.1)
    return t


# ---------------------------------------------------------------------------------------------
# Safetensors
# ---------------------------------------------------------------------------------------------


def safetensors_bytes(tensors, dtype):
    """Serializes {name: float32 array} as a .safetensors file (names sorted, data in that order).

    Layout: u64 little-endian header length N, N bytes of JSON header (space padded to a multiple
    of 8 so the data is aligned), then the raw data; each header entry has dtype, shape and
    data_offsets [begin, end) relative to the start of the data.
    """
    header = {"__metadata__": {"format": "pt"}}
    chunks = []
    offset = 0
    for name in sorted(tensors):
        data = encode(tensors[name], dtype)
        header[name] = {
            "dtype": SAFETENSORS_DTYPES[dtype],
            "shape": list(tensors[name].shape),
            "data_offsets": [offset, offset + len(data)],
        }
        chunks.append(data)
        offset += len(data)
    header_bytes = json.dumps(header, sort_keys=True, separators=(",", ":")).encode("utf-8")
    header_bytes += b" " * (-(8 + len(header_bytes)) % 8)
    return struct.pack("<Q", len(header_bytes)) + header_bytes + b"".join(chunks)


def split_into_shards(tensors, dtype, shards):
    """Splits names (sorted) into `shards` consecutive groups of roughly equal byte size."""
    names = sorted(tensors)
    if shards > len(names):
        raise ValueError(f"--shards {shards} exceeds the number of tensors ({len(names)})")
    sizes = [tensors[n].size * ELEMENT_BYTES[dtype] for n in names]
    total = sum(sizes)
    groups, current, acc = [], [], 0
    for idx, (name, size) in enumerate(zip(names, sizes)):
        current.append(name)
        acc += size
        remaining_names = len(names) - idx - 1
        remaining_groups = shards - len(groups) - 1
        if remaining_groups > 0 and (acc >= total * (len(groups) + 1) / shards
                                     or remaining_names == remaining_groups):
            groups.append(current)
            current = []
    groups.append(current)
    assert len(groups) == shards and all(groups), "shard split produced an empty shard"
    return groups


def write_checkpoint(out, tensors, dtype, shards):
    if shards <= 1:
        write_bytes(os.path.join(out, "model.safetensors"), safetensors_bytes(tensors, dtype))
        return
    weight_map = {}
    total_size = 0
    for i, group in enumerate(split_into_shards(tensors, dtype, shards)):
        fname = f"model-{i + 1:05d}-of-{shards:05d}.safetensors"
        write_bytes(os.path.join(out, fname),
                    safetensors_bytes({n: tensors[n] for n in group}, dtype))
        for n in group:
            weight_map[n] = fname
            total_size += tensors[n].size * ELEMENT_BYTES[dtype]
    index = {"metadata": {"total_size": total_size}, "weight_map": weight_map}
    write_json(os.path.join(out, "model.safetensors.index.json"), index)


# ---------------------------------------------------------------------------------------------
# Config, tokenizer, files
# ---------------------------------------------------------------------------------------------


def write_bytes(path, data):
    with open(path, "wb") as f:
        f.write(data)


def write_json(path, obj):
    write_bytes(path, (json.dumps(obj, indent=2, sort_keys=True) + "\n").encode("utf-8"))


def rope_scaling_config(kind):
    if kind == "none":
        return None
    if kind == "linear":
        return {"factor": 2.0, "rope_type": "linear", "type": "linear"}
    # Llama 3.1's frequency-dependent scaling. original_max_position_embeddings is small so that
    # with head_dim 32 some frequencies fall in each of the three regimes (kept, scaled, blended).
    return {"factor": 8.0, "high_freq_factor": 4.0, "low_freq_factor": 1.0,
            "original_max_position_embeddings": 128, "rope_type": "llama3"}


def model_config(args):
    cfg = {
        "architectures": [ARCHITECTURES[args.model_type]],
        "model_type": args.model_type,
        "vocab_size": args.vocab,
        "hidden_size": args.hidden,
        "intermediate_size": args.intermediate,
        "num_hidden_layers": args.layers,
        "num_attention_heads": args.heads,
        "num_key_value_heads": args.kv_heads,
        "head_dim": args.head_dim,
        "max_position_embeddings": args.max_pos,
        "rms_norm_eps": 1e-5,
        "rope_theta": 10000.0,
        "rope_scaling": rope_scaling_config(args.rope_scaling),
        "hidden_act": "silu",
        "tie_word_embeddings": bool(args.tie_embeddings),
        "torch_dtype": TORCH_DTYPES[args.dtype],
        "bos_token_id": 1,
        "eos_token_id": 2,
        "initializer_range": 0.02,
        "use_cache": True,
    }
    if args.model_type == "llama":
        cfg["attention_bias"] = bool(args.attention_bias)
        cfg["mlp_bias"] = False
    elif args.model_type == "mistral":
        # Equal to the context length, so the sliding window never drops anything.
        cfg["sliding_window"] = args.max_pos
        if args.attention_bias:  # not a Mistral option in HF; written so loaders bind the biases
            cfg["attention_bias"] = True
    else:  # qwen2 always has q/k/v biases; attention_bias is written for readers that look for it.
        cfg["attention_bias"] = True
        cfg["use_sliding_window"] = False
        cfg["sliding_window"] = args.max_pos
        cfg["max_window_layers"] = args.layers
    return cfg


def train_tokenizer(text_path, seed):
    """Trains the 512-piece BPE tokenizer; returns the serialized model bytes."""
    import sentencepiece as spm

    with open(text_path, "r", encoding="utf-8") as f:
        lines = [line.rstrip("\n") for line in f]
    lines = [line for line in lines if line.strip()]
    spm.set_random_generator_seed(seed)
    model = io.BytesIO()
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter(lines),
        model_writer=model,
        model_type="bpe",
        vocab_size=TOKENIZER_VOCAB,
        byte_fallback=True,
        character_coverage=1.0,
        split_digits=True,
        normalization_rule_name="identity",
        add_dummy_prefix=True,
        remove_extra_whitespaces=False,
        allow_whitespace_only_pieces=True,
        unk_id=0, bos_id=1, eos_id=2, pad_id=-1,
        num_threads=1,
        input_sentence_size=0,
        shuffle_input_sentence=False,
        minloglevel=2,
    )
    return model.getvalue()


def parse_args(argv):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--out", required=True, help="output directory (created if missing)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--model-type", choices=sorted(ARCHITECTURES), default="llama")
    p.add_argument("--dtype", choices=sorted(TORCH_DTYPES), default="bf16")
    p.add_argument("--tie-embeddings", action="store_true", help="omit lm_head.weight")
    p.add_argument("--shards", type=int, default=1)
    p.add_argument("--rope-scaling", choices=["none", "linear", "llama3"], default="none")
    p.add_argument("--layers", type=int, default=2)
    p.add_argument("--hidden", type=int, default=128)
    p.add_argument("--intermediate", type=int, default=384)
    p.add_argument("--heads", type=int, default=4)
    p.add_argument("--kv-heads", type=int, default=2)
    p.add_argument("--head-dim", type=int, default=None, help="default hidden / heads")
    p.add_argument("--vocab", type=int, default=TOKENIZER_VOCAB,
                   help=f">= {TOKENIZER_VOCAB}; ids past the tokenizer's are never produced")
    p.add_argument("--max-pos", type=int, default=512)
    p.add_argument("--attention-bias", action="store_true",
                   help="q/k/v biases for llama/mistral too (always on for qwen2)")
    p.add_argument("--text", default=DEFAULT_TEXT, help="tokenizer training text")
    p.add_argument("--hf-tokenizer", metavar="TOKENIZER_JSON",
                   help="use this Hugging Face tokenizer.json (e.g. a byte-level BPE of "
                        "tests/data/hf-tokenizers/) instead of training tokenizer.model; a ChatML "
                        "vocabulary (<|endoftext|>, <|im_start|>, <|im_end|> = ids 0, 1, 2, as in "
                        "tests/data/hf-tokenizers/qwen2) is expected")
    p.add_argument("--chat-template", metavar="JINJA",
                   help="write this chat template into tokenizer_config.json (with --hf-tokenizer)")
    args = p.parse_args(argv)
    args.tokenizer_vocab = TOKENIZER_VOCAB
    if args.chat_template and not args.hf_tokenizer:
        p.error("--chat-template needs --hf-tokenizer")
    if args.hf_tokenizer:
        with open(args.hf_tokenizer, "r", encoding="utf-8") as f:
            tok = json.load(f)
        ids = list(tok["model"]["vocab"].values()) + [t["id"] for t in tok.get("added_tokens", [])]
        args.tokenizer_vocab = max(ids) + 1
    if args.head_dim is None:
        if args.hidden % args.heads:
            p.error(f"--hidden {args.hidden} is not divisible by --heads {args.heads}")
        args.head_dim = args.hidden // args.heads
    if args.heads % args.kv_heads:
        p.error(f"--heads {args.heads} is not a multiple of --kv-heads {args.kv_heads}")
    if args.vocab < args.tokenizer_vocab:
        p.error(f"--vocab {args.vocab} is smaller than the tokenizer's {args.tokenizer_vocab} ids")
    if args.shards < 1:
        p.error("--shards must be >= 1")
    if min(args.layers, args.hidden, args.intermediate, args.heads, args.kv_heads,
           args.head_dim, args.max_pos) < 1:
        p.error("sizes must be positive")
    if args.model_type == "qwen2":
        args.attention_bias = True
    return args


def main(argv=None):
    args = parse_args(sys.argv[1:] if argv is None else argv)
    os.makedirs(args.out, exist_ok=True)
    cfg = model_config(args)
    if args.hf_tokenizer:
        # As a ChatML base model (Qwen2, SmolLM2) is configured: bos/eos <|endoftext|> (0), the
        # end-of-turn <|im_end|> (2) only as tokenizer_config.json's eos_token, and eos_token_id
        # given as a list the way instruct models' generation_config.json give it.
        cfg["bos_token_id"] = 0
        cfg["eos_token_id"] = 0
    write_json(os.path.join(args.out, "config.json"), cfg)
    write_checkpoint(args.out, build_tensors(args), args.dtype, args.shards)
    if args.hf_tokenizer:
        write_json(os.path.join(args.out, "generation_config.json"),
                   {"bos_token_id": 0, "eos_token_id": [0]})
        with open(args.hf_tokenizer, "rb") as f:
            write_bytes(os.path.join(args.out, "tokenizer.json"), f.read())
        tokenizer_config = {
            "tokenizer_class": "PreTrainedTokenizerFast",
            "bos_token": None,
            "eos_token": "<|im_end|>",
            "pad_token": "<|endoftext|>",
        }
        if args.chat_template:
            with open(args.chat_template, "r", encoding="utf-8") as f:
                tokenizer_config["chat_template"] = f.read()
        write_json(os.path.join(args.out, "tokenizer_config.json"), tokenizer_config)
    else:
        write_json(os.path.join(args.out, "generation_config.json"),
                   {"bos_token_id": 1, "eos_token_id": 2})
        write_bytes(os.path.join(args.out, "tokenizer.model"),
                    train_tokenizer(args.text, args.seed))
    return 0


if __name__ == "__main__":
    sys.exit(main())
