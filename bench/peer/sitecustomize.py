"""Lets llama.cpp's convert_hf_to_gguf.py run on Debian 12's python3-torch 1.13 (peer benchmark).

Put this directory first on PYTHONPATH when running the converter (bench/peer/run_cpu_peer.py does):
Python imports `sitecustomize` at startup. Debian's torch 1.13 lacks the float8 dtype names that the
converter's dtype table names (never used for our bf16 checkpoints), and Debian has no `safetensors`
package; the converter only needs `safe_open(...).keys()` and `.get_tensor(name)` (with --no-lazy),
which a json header parse + numpy memmap provides.
"""

import json
import struct
import sys
import types

import numpy as np
import torch

for _name in ("float8_e4m3fn", "float8_e5m2"):
    if not hasattr(torch, _name):
        setattr(torch, _name, torch.float16)  # placeholder: only named in a table, never produced

# safetensors dtype -> (numpy dtype of the stored bytes, torch dtype to view them as)
_DTYPES = {
    "F64": (np.float64, None), "F32": (np.float32, None), "F16": (np.float16, None),
    "BF16": (np.int16, torch.bfloat16), "I64": (np.int64, None), "I32": (np.int32, None),
    "I16": (np.int16, None), "I8": (np.int8, None), "U8": (np.uint8, None),
    "BOOL": (np.bool_, None),
}


class _SafeOpen:
    def __init__(self, path, framework="pt", device="cpu"):
        del framework, device
        with open(path, "rb") as f:
            (n,) = struct.unpack("<Q", f.read(8))
            header = json.loads(f.read(n))
        header.pop("__metadata__", None)
        self._header = header
        self._data = np.memmap(path, dtype=np.uint8, mode="r", offset=8 + n)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False

    def keys(self):
        return list(self._header.keys())

    def get_tensor(self, name):
        info = self._header[name]
        np_dtype, view_as = _DTYPES[info["dtype"]]
        begin, end = info["data_offsets"]
        a = np.array(self._data[begin:end]).view(np_dtype).reshape(info["shape"])
        t = torch.from_numpy(a)
        return t.view(view_as) if view_as is not None else t


_module = types.ModuleType("safetensors")
_module.safe_open = _SafeOpen
sys.modules.setdefault("safetensors", _module)
