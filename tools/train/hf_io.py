"""Hugging Face directory export / import for tools/train/llama.py models.

export_hf() writes config.json, generation_config.json, model.safetensors (bf16 by default, via the
same numpy safetensors writer as tools/make_test_model.py) and tokenizer.model into a temporary
sibling directory and renames it into place, so a reader never sees a half-written export.
load_hf() reads such a directory back (F32/F16/BF16) into a LlamaForCausalLM.
"""

import json
import os
import shutil
import struct
import sys

import numpy as np
import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
import make_test_model  # noqa: E402  (tools/make_test_model.py: the safetensors writer)
from llama import LlamaConfig, LlamaForCausalLM  # noqa: E402

DTYPE_FLAGS = {"bfloat16": "bf16", "float16": "f16", "float32": "f32"}


def _write_json(path, obj):
    with open(path, "w") as f:
        json.dump(obj, f, indent=2, sort_keys=True)
        f.write("\n")


def export_hf(model, tokenizer_path, out_dir, torch_dtype="bfloat16", info=None):
    """Writes the HF layout of `model` to out_dir (replacing it atomically)."""
    cfg = model.cfg
    tmp = out_dir.rstrip("/") + ".tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    os.makedirs(tmp)
    _write_json(os.path.join(tmp, "config.json"), cfg.hf_config(torch_dtype))
    _write_json(os.path.join(tmp, "generation_config.json"),
                {"bos_token_id": cfg.bos_token_id, "eos_token_id": cfg.eos_token_id})
    tensors = {name: p.detach().float().cpu().numpy() for name, p in model.state_dict().items()}
    with open(os.path.join(tmp, "model.safetensors"), "wb") as f:
        f.write(make_test_model.safetensors_bytes(tensors, DTYPE_FLAGS[torch_dtype]))
    shutil.copyfile(tokenizer_path, os.path.join(tmp, "tokenizer.model"))
    if info is not None:
        _write_json(os.path.join(tmp, "training_state.json"), info)
    old = out_dir.rstrip("/") + ".old"
    shutil.rmtree(old, ignore_errors=True)
    if os.path.exists(out_dir):
        os.rename(out_dir, old)
    os.rename(tmp, out_dir)
    shutil.rmtree(old, ignore_errors=True)


def read_safetensors(path):
    """{name: float32 numpy array} of a .safetensors file."""
    with open(path, "rb") as f:
        blob = f.read()
    (n,) = struct.unpack("<Q", blob[:8])
    header = json.loads(blob[8 : 8 + n])
    data = memoryview(blob)[8 + n :]
    out = {}
    for name, e in header.items():
        if name == "__metadata__":
            continue
        b, t = e["data_offsets"]
        if e["dtype"] == "BF16":
            arr = (np.frombuffer(data[b:t], dtype="<u2").astype(np.uint32) << 16).view(np.float32)
        elif e["dtype"] == "F16":
            arr = np.frombuffer(data[b:t], dtype="<f2").astype(np.float32)
        elif e["dtype"] == "F32":
            arr = np.frombuffer(data[b:t], dtype="<f4").copy()
        else:
            raise ValueError(f"{path}: {name}: unsupported dtype {e['dtype']}")
        out[name] = arr.reshape(e["shape"])
    return out


def load_hf(model_dir):
    """Loads config.json + model.safetensors of model_dir into a float32 LlamaForCausalLM."""
    with open(os.path.join(model_dir, "config.json")) as f:
        cfg = LlamaConfig.from_hf(json.load(f))
    model = LlamaForCausalLM(cfg)
    tensors = read_safetensors(os.path.join(model_dir, "model.safetensors"))
    state = {k: torch.from_numpy(np.ascontiguousarray(v)) for k, v in tensors.items()}
    missing, unexpected = model.load_state_dict(state, strict=False)
    if missing or unexpected:
        raise ValueError(f"{model_dir}: missing tensors {missing}, unexpected {unexpected}")
    return model
