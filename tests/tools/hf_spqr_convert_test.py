#!/usr/bin/env python3
"""spqr-convert end to end (issue 15, section 3), independent of the C++ code it checks.

1. Writes a small transformers SpQR checkpoint (quant_method "spqr", tensors dense_weights,
   row_offsets, col_vals, in_perm per projection) around tests/data/test-model, with a writer
   written here from the layout description (docs/model-format.md section 11, from the authors'
   spqr_quant QuantizedLinear / tensor_compress_interleaved): random codes, statistics, outliers
   (CSR and PTCSR) and permutations (and an empty in_perm = identity).
2. Runs spqr-convert on it.
3. (a) Decodes the converted spqr-format 1 tensors with a decoder written here from
   docs/model-format.md section 3, and the original tensors with a decoder written here from
   their layout (same fp32 arithmetic): the two must be bit-equal. The authors' decoders round
   every step to fp16; the difference to that decode is measured and bounded (printed).
4. (b) Writes a dense checkpoint whose projections are the decoded weights and checks that the
   engine (spqr-dump-logits: the loader spqr-server uses) gives the same logits for the converted
   directory as for the dense one (summation order only).
5. Malformed inputs are refused with a message naming the tensor.

usage: hf_spqr_convert_test.py --convert BIN --dump-logits BIN --source-dir DIR
"""
import argparse
import json
import os
import shutil
import struct
import subprocess
import sys
import tempfile

import numpy as np

PROJ = ["self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj", "self_attn.o_proj",
        "mlp.gate_proj", "mlp.up_proj", "mlp.down_proj"]
DT = {"F32": np.float32, "F16": np.float16, "BF16": np.uint16, "I64": np.int64, "I32": np.int32,
      "U32": np.uint32, "U16": np.uint16, "U8": np.uint8}


def read_safetensors(path):
    with open(path, "rb") as f:
        data = f.read()
    (hlen,) = struct.unpack("<Q", data[:8])
    header = json.loads(data[8:8 + hlen])
    base = 8 + hlen
    out = {}
    for name, t in header.items():
        if name == "__metadata__":
            continue
        b, e = t["data_offsets"]
        out[name] = (t["dtype"], np.frombuffer(data[base + b:base + e], dtype=DT[t["dtype"]])
                     .reshape(t["shape"]).copy())
    return out


def write_safetensors(path, tensors):
    """tensors: name -> (dtype string, numpy array)."""
    header, blobs, off = {}, [], 0
    # Largest element size first (as the safetensors package orders them): every tensor aligned.
    order = sorted(tensors.items(), key=lambda kv: (-kv[1][1].dtype.itemsize, kv[0]))
    for name, (dtype, arr) in order:
        raw = np.ascontiguousarray(arr).tobytes()
        header[name] = {"dtype": dtype, "shape": list(arr.shape), "data_offsets": [off, off + len(raw)]}
        blobs.append(raw)
        off += len(raw)
    h = json.dumps(header).encode()
    h += b" " * ((8 - len(h) % 8) % 8)
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(h)) + h + b"".join(blobs))


def read_dir(d):
    out = {}
    for fn in sorted(os.listdir(d)):
        if fn.endswith(".safetensors"):
            out.update(read_safetensors(os.path.join(d, fn)))
    return out


def f16(x):
    return np.asarray(x, dtype=np.float16)


# ---- the transformers SpQR layout, written from its description ----

def make_layer(rng, m, n, layout, identity_perm):
    """Random layer: codes, second-order fp16 values per 16x16 tile, outliers, permutation."""
    tm, tn = m // 16, n // 16
    q = rng.integers(0, 8, size=(m, n))
    qs = rng.integers(0, 8, size=(m, tn))
    qz = rng.integers(0, 8, size=(m, tn))
    # second order per tile: scale of scales, zero of scales, scale of zeros, zero of zeros
    sos = f16(rng.uniform(0.001, 0.004, size=(tm, tn)))
    zos = f16(rng.uniform(-1.5, -0.5, size=(tm, tn)))
    soz = f16(rng.uniform(0.3, 0.7, size=(tm, tn)))
    zoz = f16(rng.uniform(-0.5, 0.5, size=(tm, tn)))
    mask = rng.random((m, n)) < 0.02
    rows, cols = np.nonzero(mask)  # row-major order: sorted by row, then column
    vals = f16(rng.normal(0, 0.05, size=len(rows)))
    perm = np.arange(n) if identity_perm else rng.permutation(n)
    return dict(m=m, n=n, q=q, qs=qs, qz=qz, sos=sos, zos=zos, soz=soz, zoz=zoz, rows=rows,
                cols=cols, vals=vals, perm=perm, layout=layout, identity_perm=identity_perm)


def pack_layer(L):
    m, n = L["m"], L["n"]
    tm, tn = m // 16, n // 16
    dense = np.zeros(tm * tn * 16, dtype=np.uint64)
    for ti in range(tm):
        for tj in range(tn):
            second = (int(L["sos"][ti, tj].view(np.uint16)) | int(L["soz"][ti, tj].view(np.uint16)) << 16
                      | int(L["zos"][ti, tj].view(np.uint16)) << 32
                      | int(L["zoz"][ti, tj].view(np.uint16)) << 48)
            for k in range(16):
                r = ti * 16 + k
                w = int(L["qs"][r, tj]) | int(L["qz"][r, tj]) << 3
                for j in range(16):
                    w |= int(L["q"][r, tj * 16 + j]) << (6 + 3 * j)
                w |= ((second >> (8 * (k // 2))) & 0xFF) << 54
                dense[(ti * tn + tj) * 16 + k] = w
    cv = (L["vals"].view(np.uint16).astype(np.uint32) << 16) | L["cols"].astype(np.uint32)
    if L["layout"] == "csr":
        ro = np.zeros(m + 1, dtype=np.int64)
        np.add.at(ro, L["rows"] + 1, 1)
        ro = np.cumsum(ro)
        col_vals = cv
    else:  # PTCSR: per 16-row block, row k's i-th outlier at block_start + i*16 + k, zero padding
        ro, col_vals = [0], []
        for b in range(tm):
            per_row = [cv[L["rows"] == b * 16 + k] for k in range(16)]
            count = max(len(p) for p in per_row)
            block = np.zeros(count * 16, dtype=np.uint32)
            for k, p in enumerate(per_row):
                block[k:k + 16 * len(p):16] = p
            col_vals.append(block)
            ro.append(ro[-1] + count * 16)
        ro = np.array(ro)
        col_vals = np.concatenate(col_vals)
    if L["identity_perm"]:
        in_perm = np.zeros(0, dtype=np.uint32)
    else:
        p = L["perm"].astype(np.uint32)
        in_perm = p[0::2] | (p[1::2] << 16)
    return {"dense_weights": ("I64", dense.view(np.int64)),
            "row_offsets": ("I32", ro.astype(np.int32)),
            "col_vals": ("I32", col_vals.view(np.int32)),
            "in_perm": ("I32", in_perm.view(np.int32))}


def decode_theirs(t, m, n, half):
    """Decodes their tensors. half=False: fp32, one rounding per operation (the spqr-format 1
    arithmetic); half=True: every step rounded to fp16 as their decoders do, result fp16."""
    dense = t["dense_weights"][1].view(np.uint64)
    tm, tn = m // 16, n // 16
    words = dense.reshape(tm, tn, 16)
    second = np.zeros((tm, tn), dtype=np.uint64)
    for k in range(16):
        second |= (words[:, :, k] >> np.uint64(54)) << np.uint64(8 * (k // 2))
    h = [((second >> np.uint64(s)) & np.uint64(0xFFFF)).astype(np.uint16).view(np.float16)
         for s in (0, 16, 32, 48)]
    sos, soz, zos, zoz = h
    w = words.transpose(0, 2, 1, 3) if False else words  # [tm, tn, k]
    qs = (w & np.uint64(7)).astype(np.float32)
    qz = ((w >> np.uint64(3)) & np.uint64(7)).astype(np.float32)
    codes = np.stack([((w >> np.uint64(6 + 3 * j)) & np.uint64(7)).astype(np.float32)
                      for j in range(16)], axis=-1)  # [tm, tn, 16 rows, 16 cols]
    if half:
        H = np.float16
        s = (sos[:, :, None].astype(H) * (qs.astype(H) - zos[:, :, None].astype(H))).astype(H)
        z = (soz[:, :, None].astype(H) * (qz.astype(H) - zoz[:, :, None].astype(H))).astype(H)
        W = (s[..., None] * (codes.astype(H) - z[..., None])).astype(H).astype(np.float32)
    else:
        F = np.float32
        s = sos[:, :, None].astype(F) * (qs - zos[:, :, None].astype(F))
        z = soz[:, :, None].astype(F) * (qz - zoz[:, :, None].astype(F))
        W = s[..., None] * (codes - z[..., None])
    W = W.transpose(0, 2, 1, 3).reshape(m, n)  # [tm, 16 rows, tn, 16 cols]
    ro = t["row_offsets"][1]
    cv = t["col_vals"][1].view(np.uint32)
    csr = len(ro) == m + 1
    for seg in range(len(ro) - 1):
        for e in range(ro[seg], ro[seg + 1]):
            if not csr and cv[e] == 0:
                continue
            r = seg if csr else seg * 16 + e % 16
            W[r, cv[e] & 0xFFFF] += np.float32(np.uint16(cv[e] >> 16).view(np.float16))
    if half:
        W = W.astype(np.float16).astype(np.float32)
    ip = t["in_perm"][1].view(np.uint32)
    perm = np.arange(n) if len(ip) == 0 else np.stack([ip & 0xFFFF, ip >> 16], 1).reshape(-1)
    out = np.zeros_like(W)
    out[:, perm] = W
    return out


# ---- spqr-format 1, written from docs/model-format.md sections 2, 3 and 5 ----

def unpack_bits(words, count, bits):
    rows = words.shape[0]
    bitstream = np.unpackbits(words.astype("<u4").view(np.uint8).reshape(rows, -1), axis=1,
                              bitorder="little")
    codes = bitstream[:, :count * bits].reshape(rows, count, bits)
    return (codes * (1 << np.arange(bits))).sum(-1).astype(np.float32)


def decode_ours(t, prefix):
    meta = t[prefix + ".spqr_meta"][1]
    assert meta[0] == 1, meta
    m, n, wbits, beta1, beta2, stats_bits = (int(x) for x in meta[1:7])
    G = n // beta1
    codes = unpack_bits(t[prefix + ".spqr_weight_codes"][1], n, wbits)
    assert stats_bits == 3, stats_bits
    sc = unpack_bits(t[prefix + ".spqr_scale_codes"][1], G, stats_bits)
    zc = unpack_bits(t[prefix + ".spqr_zero_codes"][1], G, stats_bits)
    sl = t[prefix + ".spqr_second_level"][1].astype(np.float32)  # [blocks][G][4]
    blk = np.arange(m) // beta2
    s = sl[blk, :, 0] * (sc - sl[blk, :, 1])
    z = sl[blk, :, 2] * (zc - sl[blk, :, 3])
    W = np.repeat(s, beta1, 1) * (codes - np.repeat(z, beta1, 1))
    ro = t[prefix + ".spqr_outlier_row_offsets"][1]
    cols = t[prefix + ".spqr_outlier_cols"][1]
    vals = t[prefix + ".spqr_outlier_values"][1].astype(np.float32)
    for r in range(m):
        for k in range(ro[r], ro[r + 1]):
            W[r, cols[k]] = W[r, cols[k]] + vals[k]
    perm = t[prefix + ".spqr_perm"][1]
    out = np.zeros_like(W)
    out[:, perm] = W
    return out


def run(cmd, expect_ok=True):
    p = subprocess.run(cmd, capture_output=True, text=True)
    if expect_ok and p.returncode != 0:
        sys.exit(f"FAIL: {' '.join(cmd)}\n{p.stdout}\n{p.stderr}")
    return p


def logits(dump, model, tokens, out, kernel="exact"):
    run([dump, "--model", model, "--tokens", ",".join(map(str, tokens)), "--out", out,
         "--threads", "2", "--spqr-kernel", kernel, "--dense-kernel", "exact"])
    return np.load(out)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--convert", required=True)
    ap.add_argument("--dump-logits", required=True)
    ap.add_argument("--source-dir", required=True)
    ap.add_argument("--keep", help="copy the transformers and converted directories here")
    args = ap.parse_args()
    src = os.path.join(args.source_dir, "tests/data/test-model")
    cfg = json.load(open(os.path.join(src, "config.json")))
    base = read_safetensors(os.path.join(src, "model.safetensors"))
    hidden, inter = cfg["hidden_size"], cfg["intermediate_size"]
    qd = cfg["num_attention_heads"] * cfg["head_dim"]
    kvd = cfg["num_key_value_heads"] * cfg["head_dim"]
    shapes = dict(zip(PROJ, [(qd, hidden), (kvd, hidden), (kvd, hidden), (hidden, qd),
                             (inter, hidden), (inter, hidden), (hidden, inter)]))
    rng = np.random.default_rng(15)
    tmp = tempfile.mkdtemp(prefix="hf-spqr-test-")
    try:
        hf = os.path.join(tmp, "hf")
        os.makedirs(hf)
        tensors, layers, config_shapes = {}, {}, {}
        for name, (dt, arr) in base.items():
            if not any(p in name for p in PROJ):
                tensors[name] = (dt, arr)
        i = 0
        for layer in range(cfg["num_hidden_layers"]):
            for p in PROJ:
                prefix = f"model.layers.{layer}.{p}"
                m, n = shapes[p]
                L = make_layer(rng, m, n, "ptcsr" if i % 3 == 1 else "csr", i % 5 == 2)
                i += 1
                packed = pack_layer(L)
                layers[prefix] = packed
                for part, v in packed.items():
                    tensors[f"{prefix}.{part}"] = v
                    config_shapes[f"{prefix}.{part}.shape"] = int(v[1].shape[0])
        # One projection packed by the authors' own code (tools/make_hf_spqr_fixture.py), with
        # their own decoder's output: the layout reading and the fp16 decode here must reproduce
        # it bit for bit.
        fixture = read_safetensors(os.path.join(args.source_dir,
                                                "tests/data/hf-spqr/authors_k_proj.safetensors"))
        authors_prefix = "model.layers.0.self_attn.k_proj"
        assert shapes["self_attn.k_proj"] == (64, 128), shapes
        layers[authors_prefix] = {k.split(".", 1)[1]: v for k, v in fixture.items()
                                  if k != "layer.authors_dequant"}
        for part, v in layers[authors_prefix].items():
            tensors[f"{authors_prefix}.{part}"] = v
            config_shapes[f"{authors_prefix}.{part}.shape"] = int(v[1].shape[0])
        mine16 = decode_theirs(layers[authors_prefix], 64, 128, half=True)
        ip = fixture["layer.in_perm"][1].view(np.uint32)
        perm = np.stack([ip & 0xFFFF, ip >> 16], 1).reshape(-1)
        authors = np.zeros((64, 128), dtype=np.float32)
        authors[:, perm] = fixture["layer.authors_dequant"][1].astype(np.float32)
        if not np.array_equal(mine16.view(np.uint32), authors.view(np.uint32)):
            sys.exit("FAIL: the fp16 decode here differs from the authors' dequantize_compressed")
        print("authors' layer: this test's fp16 decode == their dequantize_compressed, bit for bit")
        write_safetensors(os.path.join(hf, "model.safetensors"), tensors)
        hf_cfg = dict(cfg)
        hf_cfg["quantization_config"] = {"quant_method": "spqr", "bits": 3, "beta1": 16, "beta2": 16,
                                         "shapes": config_shapes,
                                         "modules_to_not_convert": ["lm_head.weight"]}
        json.dump(hf_cfg, open(os.path.join(hf, "config.json"), "w"), indent=2)
        for fn in ("tokenizer.model", "generation_config.json"):
            shutil.copy(os.path.join(src, fn), hf)

        out = os.path.join(tmp, "converted")
        p = run([args.convert, "--in", hf, "--out", out])
        print("spqr-convert:", p.stdout.strip())
        conv = read_dir(out)
        for fn in ("tokenizer.model", "generation_config.json"):
            assert open(os.path.join(out, fn), "rb").read() == open(os.path.join(src, fn), "rb").read()
        qc = json.load(open(os.path.join(out, "config.json")))["quantization_config"]
        assert qc["format_version"] == 1 and qc["imported_from"] == "transformers-spqr", qc

        # (a) bit-equal decode; difference to the authors' fp16-arithmetic decode
        dense_ours, worst_rel, worst_abs, n_diff, n_total = {}, 0.0, 0.0, 0, 0
        for prefix, t in layers.items():
            m, n = shapes[prefix.split(".", 3)[3]]
            ours = decode_ours(conv, prefix)
            theirs32 = decode_theirs(t, m, n, half=False)
            if not np.array_equal(ours.view(np.uint32), theirs32.view(np.uint32)):
                bad = np.argwhere(ours.view(np.uint32) != theirs32.view(np.uint32))[0]
                sys.exit(f"FAIL: {prefix}: decode differs at {bad}: {ours[tuple(bad)]} vs "
                         f"{theirs32[tuple(bad)]}")
            theirs16 = decode_theirs(t, m, n, half=True)
            diff = np.abs(ours - theirs16)
            # fp16 rounding of scale, zero, (q - z), the product and the sum: relative to the
            # row's largest weight (near-zero weights s*(q - z) with q ~ z cancel, so a relative
            # error per weight is not meaningful)
            scale = np.abs(theirs16).max(axis=1, keepdims=True)
            worst_rel = max(worst_rel, float((diff / scale).max()))
            worst_abs = max(worst_abs, float(diff.max()))
            n_diff += int((diff > 0).sum())
            n_total += diff.size
            dense_ours[prefix] = ours
        print(f"(a) spqr-format 1 decode == fp32 decode of the transformers tensors, bit for bit "
              f"({len(layers)} layers)")
        print(f"    vs the authors' fp16-arithmetic decode: {n_diff}/{n_total} weights differ, "
              f"max |diff| {worst_abs:.3g}, max |diff| / row max |w| {worst_rel:.3g}")
        assert worst_rel < 2.0 ** -8, worst_rel

        # (b) same logits as the dense model built from the decoded weights
        dense_dir = os.path.join(tmp, "dense")
        os.makedirs(dense_dir)
        dt = {n: v for n, v in base.items() if not any(p in n for p in PROJ)}
        for prefix, W in dense_ours.items():
            dt[prefix + ".weight"] = ("F32", W.astype(np.float32))
        write_safetensors(os.path.join(dense_dir, "model.safetensors"), dt)
        json.dump(cfg, open(os.path.join(dense_dir, "config.json"), "w"))
        for fn in ("tokenizer.model", "generation_config.json"):
            shutil.copy(os.path.join(src, fn), dense_dir)
        tokens = [1, 17, 300, 5, 99, 42, 7, 250, 3, 128]
        la = logits(args.dump_logits, out, tokens, os.path.join(tmp, "a.npy"))
        lb = logits(args.dump_logits, dense_dir, tokens, os.path.join(tmp, "b.npy"))
        err = float(np.abs(la - lb).max())
        if args.keep:
            shutil.copytree(hf, os.path.join(args.keep, "hf"), dirs_exist_ok=True)
            shutil.copytree(out, os.path.join(args.keep, "converted"), dirs_exist_ok=True)
        print(f"(b) logits converted (exact SpQR kernel) vs dense-from-decoded: max |diff| "
              f"{err:.3g} (logit range {float(np.abs(lb).max()):.3g})")
        # Identical weights; only the summation order of the dot products differs.
        assert err < 1e-4 * max(1.0, float(np.abs(lb).max())), err
        li = logits(args.dump_logits, out, tokens, os.path.join(tmp, "i.npy"), "int8")
        print(f"    int8 SpQR kernel vs dense: max |diff| {float(np.abs(li - lb).max()):.3g} "
              f"(its activations are quantized to int8; docs/cpu-performance.md)")

        # The raw transformers directory is refused with a pointer to spqr-convert.
        p = run([args.dump_logits, "--model", hf, "--tokens", "1,2", "--out",
                 os.path.join(tmp, "c.npy")], expect_ok=False)
        assert p.returncode != 0 and "spqr-convert" in p.stderr, p.stderr

        # Malformed inputs: non-zero exit, message naming the tensor / key.
        def mutate(label, edit, expect):
            bad = os.path.join(tmp, "bad-" + label)
            shutil.copytree(hf, bad)
            t2 = dict(tensors)
            c2 = json.load(open(os.path.join(bad, "config.json")))
            edit(t2, c2)
            write_safetensors(os.path.join(bad, "model.safetensors"), t2)
            json.dump(c2, open(os.path.join(bad, "config.json"), "w"))
            r = run([args.convert, "--in", bad, "--out", bad + "-out"], expect_ok=False)
            if r.returncode == 0 or expect not in r.stderr:
                sys.exit(f"FAIL: malformed '{label}' not refused as expected ({expect!r}): "
                         f"rc={r.returncode} {r.stderr}")
            assert not os.path.exists(bad + "-out"), label
            print(f"    refused {label}: {r.stderr.strip()}")

        pre = "model.layers.1.mlp.up_proj"
        cv = tensors[pre + ".col_vals"][1].copy()
        ro = tensors[pre + ".row_offsets"][1].copy()

        def set_t(name, arr):
            return lambda t, c: t.__setitem__(name, (t[name][0], arr))

        big_col = cv.copy()
        big_col[0] = (big_col[0] & ~0xFFFF) | 0x7FF0
        mutate("column", set_t(pre + ".col_vals", big_col), pre + ".col_vals")
        ro_bad = ro.copy()
        ro_bad[5] = ro_bad[6] + 1
        mutate("offsets", set_t(pre + ".row_offsets", ro_bad), pre + ".row_offsets")
        pre0 = "model.layers.0.self_attn.q_proj"  # a layer with a permutation
        ip = tensors[pre0 + ".in_perm"][1].copy()
        ip[1] = ip[0]
        mutate("perm", set_t(pre0 + ".in_perm", ip), pre0)
        # Without the config's shapes the importer's own checks must catch these.
        mutate("dtype", lambda t, c: (c["quantization_config"].pop("shapes"), t.__setitem__(
            pre + ".dense_weights", ("I32", t[pre + ".dense_weights"][1].view(np.int32)))),
            pre + ".dense_weights': dtype I32")
        mutate("missing", lambda t, c: (c["quantization_config"].pop("shapes"),
                                        t.pop(pre + ".in_perm")), pre + ".in_perm': missing")
        mutate("missing-shape", lambda t, c: t.pop(pre + ".in_perm"), pre + ".in_perm' is missing")
        mutate("bits", lambda t, c: c["quantization_config"].__setitem__("bits", 4), "bits")
        mutate("shapes", lambda t, c: c["quantization_config"]["shapes"].__setitem__(
            pre + ".col_vals.shape", 3), pre + ".col_vals.shape")
        dup = cv.copy()
        first_row = int(np.argmax(np.diff(ro) > 1))
        dup[ro[first_row] + 1] = dup[ro[first_row]]
        mutate("duplicate", set_t(pre + ".col_vals", dup), "two outliers")
        print("PASS")
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
