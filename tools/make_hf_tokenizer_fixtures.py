#!/usr/bin/env python3
"""Builds the tokenizer.json test fixtures with Hugging Face `tokenizers` and records its output.

The C++ tokenizer.json implementation (engine/tokenizer/hf_tokenizer.h) is checked against the
reference implementation, the `tokenizers` package from PyPI (nothing of it is committed):

  tests/data/hf-tokenizers/<kind>/tokenizer.json   small BPEs trained on tools/test_model_text.txt
                                                   (+ a few multilingual lines), one per kind:
      gpt2       ByteLevel pre-tokenizer with the GPT-2 regex, ByteLevel decoder
      llama3     Split(Llama 3 regex) + ByteLevel, ignore_merges, TemplateProcessing bos
      qwen2      NFC normalizer, Split(Qwen2 regex) + ByteLevel, non-special and lstrip/rstrip
                 added tokens
      llama2     SentencePiece-style: Prepend/Replace normalizers, byte fallback, fused unk,
                 Replace/ByteFallback/Fuse/Strip decoder, tokenizer_config.json (LlamaTokenizerFast)
      metaspace  the same vocab with a Metaspace pre-tokenizer (prepend_scheme "first") and a
                 ByteFallback + Metaspace decoder (Mistral-style exports)
  tests/data/hf-tokenizers/expected.json           for a few hundred strings (code, emoji, CJK,
      whitespace runs, special tokens in text, invalid UTF-8 read as Python's errors="replace"):
      encode(text, add_special_tokens=False).ids, encode(text).ids and
      decode(ids, skip_special_tokens=True); plus decodes of random id sequences (byte tokens
      that split characters). tests/unit/hf_tokenizer_test.cc requires identical results.

Usage (python3 with `pip install tokenizers`):
  python3 tools/make_hf_tokenizer_fixtures.py            # (re)writes the fixtures
  python3 tools/make_hf_tokenizer_fixtures.py --check    # the committed expectations must equal
                                                         # what the installed tokenizers computes
                                                         # on the committed tokenizer.json files
  --cases-out FILE  (with --check) also writes fresh random strings and their reference results
                    to FILE, in the expected.json format, for the C++ test to compare against.
The check exits 77 ("skipped") when `tokenizers` cannot be imported.
"""

import argparse
import json
import os
import random
import sys

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
OUT = os.path.join(REPO, "tests", "data", "hf-tokenizers")
CORPUS = os.path.join(REPO, "tools", "test_model_text.txt")
VOCAB = 800
KINDS = ["gpt2", "llama3", "qwen2", "llama2", "metaspace"]

LLAMA3_PATTERN = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}|"
                  r" ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+")
QWEN2_PATTERN = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}|"
                 r" ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+")

MULTILINGUAL = [
    "naïve café résumé — Ünïcödé: Привет, мир! Ελληνικά",
    "日本語のテキストです。中文文本。한국어 텍스트",
    "emoji 🙂👍🏽 and symbols ∑ x² ≤ ∞ → ←",
    "def main(argv):\n    return {'a': [1, 2, 3]}\n",
    "I'm sure they'll say we've done what I'd said; it's John's.",
]


def training_lines():
    with open(CORPUS, encoding="utf-8") as f:
        lines = [line for line in f.read().split("\n") if line.strip()]
    return lines + MULTILINGUAL * 20


def special_added(content, **kw):
    from tokenizers import AddedToken
    return AddedToken(content, special=True, normalized=False, **kw)


def build_byte_level(kind):
    from tokenizers import Tokenizer, Regex, models, normalizers, pre_tokenizers, decoders
    from tokenizers import processors, trainers
    tok = Tokenizer(models.BPE(ignore_merges=(kind == "llama3")))
    if kind == "gpt2":
        tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
        tok.post_processor = processors.ByteLevel(trim_offsets=True)
        specials = ["<|endoftext|>"]
    elif kind == "llama3":
        tok.pre_tokenizer = pre_tokenizers.Sequence([
            pre_tokenizers.Split(Regex(LLAMA3_PATTERN), behavior="isolated", invert=False),
            pre_tokenizers.ByteLevel(add_prefix_space=False, trim_offsets=True, use_regex=False),
        ])
        specials = ["<|begin_of_text|>", "<|end_of_text|>", "<|start_header_id|>",
                    "<|end_header_id|>", "<|eot_id|>"]
    else:  # qwen2
        tok.normalizer = normalizers.NFC()
        tok.pre_tokenizer = pre_tokenizers.Sequence([
            pre_tokenizers.Split(Regex(QWEN2_PATTERN), behavior="isolated", invert=False),
            pre_tokenizers.ByteLevel(add_prefix_space=False, trim_offsets=False, use_regex=False),
        ])
        tok.post_processor = processors.ByteLevel(trim_offsets=False)
        specials = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=VOCAB, special_tokens=specials, show_progress=False,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator(training_lines(), trainer)
    tok.add_special_tokens([special_added(s) for s in specials])
    if kind == "llama3":
        bos = tok.token_to_id("<|begin_of_text|>")
        tok.post_processor = processors.Sequence([
            processors.ByteLevel(trim_offsets=False),
            processors.TemplateProcessing(single="<|begin_of_text|> $A",
                                          special_tokens=[("<|begin_of_text|>", bos)]),
        ])
    if kind == "qwen2":
        from tokenizers import AddedToken
        tok.add_tokens([AddedToken("<tool_call>", special=False, normalized=False),
                        AddedToken("Ångström", special=False, normalized=True)])
        tok.add_special_tokens([special_added("<mask>", lstrip=True, rstrip=True),
                                special_added("[WORD]", single_word=True)])
    return tok


def build_sentencepiece_style(kind):
    """A BPE trained without pre-tokenization, re-packed like Llama 2's tokenizer.json export:
    <unk> <s> </s> and the 256 <0xXX> byte tokens first, then the learned pieces."""
    from tokenizers import Tokenizer, models, normalizers, pre_tokenizers, decoders
    from tokenizers import processors, trainers
    base = Tokenizer(models.BPE())
    base.normalizer = normalizers.Sequence([normalizers.Prepend("▁"),
                                            normalizers.Replace(" ", "▁")])
    trainer = trainers.BpeTrainer(vocab_size=VOCAB - 259, show_progress=False, limit_alphabet=200)
    base.train_from_iterator([line[:200] for line in training_lines()], trainer)
    learned = json.loads(base.to_str())["model"]
    vocab = {"<unk>": 0, "<s>": 1, "</s>": 2}
    for b in range(256):
        vocab["<0x%02X>" % b] = len(vocab)
    for piece, _ in sorted(learned["vocab"].items(), key=lambda kv: kv[1]):
        if piece not in vocab:
            vocab[piece] = len(vocab)
    merges = [m if isinstance(m, list) else m.split(" ") for m in learned["merges"]]
    model = models.BPE(vocab=vocab, merges=[tuple(m) for m in merges], unk_token="<unk>",
                       fuse_unk=True, byte_fallback=True)
    tok = Tokenizer(model)
    tok.add_special_tokens([special_added(s) for s in ["<unk>", "<s>", "</s>"]])
    if kind == "llama2":
        tok.normalizer = normalizers.Sequence([normalizers.Prepend("▁"),
                                               normalizers.Replace(" ", "▁")])
        tok.decoder = decoders.Sequence([decoders.Replace("▁", " "), decoders.ByteFallback(),
                                         decoders.Fuse(), decoders.Strip(" ", 1, 0)])
    else:  # metaspace
        tok.pre_tokenizer = pre_tokenizers.Metaspace(replacement="▁", prepend_scheme="first",
                                                     split=False)
        tok.decoder = decoders.Sequence([decoders.ByteFallback(),
                                         decoders.Metaspace(replacement="▁",
                                                            prepend_scheme="first")])
    tok.post_processor = processors.TemplateProcessing(single="<s> $A",
                                                       special_tokens=[("<s>", 1)])
    return tok


def write_tokenizer(kind, tok):
    d = os.path.join(OUT, kind)
    os.makedirs(d, exist_ok=True)
    data = json.loads(tok.to_str())
    # Merges as "a b" strings in one kind, [a, b] pairs in the others: both forms are read.
    if kind == "gpt2":
        data["model"]["merges"] = [" ".join(m) if isinstance(m, list) else m
                                   for m in data["model"]["merges"]]
    with open(os.path.join(d, "tokenizer.json"), "w", encoding="utf-8") as f:
        json.dump(data, f, ensure_ascii=False, separators=(",", ":"))
        f.write("\n")
    if kind == "llama2":
        config = {"tokenizer_class": "LlamaTokenizerFast", "add_bos_token": True,
                  "add_eos_token": False, "bos_token": "<s>", "eos_token": "</s>",
                  "unk_token": "<unk>"}
        with open(os.path.join(d, "tokenizer_config.json"), "w", encoding="utf-8") as f:
            json.dump(config, f, indent=2)
            f.write("\n")


def fixed_strings():
    """Hand-picked strings, as bytes (some are not valid UTF-8)."""
    s = [
        "", " ", "  ", "\n", "\t", "Hello world", " Hello world", "Hello  world ", "hello\n\nworld",
        "The GNU General Public License is a free, copyleft license.",
        "  leading spaces, two  spaces, tabs\tand\nnewlines  ", "trailing spaces   ",
        "a\r\nb\r\n\r\nc", "x\u00a0y\u0085z\u3000w\u2028v", "   \n   \n\t\t x",
        "naïve café — 日本語 🙂", "Ünïcödé: Привет, мир! ∑ x² ≤ ∞", "中文文本，没有空格的句子。",
        "한국어 텍스트 입니다", "العربية نص", "👍🏽👨‍👩‍👧‍👦 family 🇩🇪 flag", "e\u0301 vs \u00e9",
        "\u1100\u1161\u11a8 jamo", "Kelvin \u212a and long s \u017f: 'ſ 'S 'K",
        "I'm sure they'll say we've done what I'd said; it's John's.", "DON'T SHOUT, I'M HERE",
        "0123456789 12345678901234 3.14159 1,000,000", "!@#$%^&*()_+-=[]{}|;:'\",.<>/?`~",
        "def f(x):\n    return x ** 2  # square\n", "for (int i = 0; i < n; ++i) { sum += a[i]; }",
        "<html><body class=\"x\">&amp;</body></html>", "https://example.com/path?q=1&r=two#frag",
        "<|endoftext|>", "text<|endoftext|>more", "<|im_start|>user\nHi there<|im_end|>\n",
        "<|begin_of_text|><|start_header_id|>user<|end_header_id|>\n\nHi<|eot_id|>",
        "<s>", "</s>", "Hello <s> world</s>", "<s>Hello", "a<s>b", "<unk>", "<0x41> is not A",
        "use <tool_call> here", "<tool_call>{\"name\": 1}</tool_call>", "an Ångström unit",
        "mask  <mask>  here", "[WORD] and x[WORD]y and [WORD]s", "▁already▁has▁markers",
        "supercalifragilisticexpialidocious" * 3, "aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa",
        "GNU GNU GNU GNU", "license License LICENSE licenses", "\x00\x01\x02 control \x1b[0m",
        "tab\there", "ends with newline\n", "\n\nstarts with newlines", "mixed 日本 and english",
    ]
    out = [x.encode("utf-8") for x in s]
    out += [b"\xff", b"abc\xffdef", b"\xe6\x97", b"\xe6\x97\xa5\xe6", b"\xed\xa0\x80surrogate",
            b"\xc0\xafoverlong", b"\xf4\x90\x80\x80big", b"\x80\x80\x80", b"ok \xf0\x9f\x99",
            b"\xe2\x82 split", b"caf\xc3", b"\xfe\xfe<s>\xff"]
    return out


def random_strings(rng, lines, count):
    pieces = ["日本", "🙂", "é", "  ", "\n", "\t", "<|endoftext|>", "<s>", "'s", "123", "ß",
              "Ω", "\u00a0", "--", "...", "<|im_end|>", "<tool_call>", "<mask>", "▁"]
    out = []
    for _ in range(count):
        mode = rng.random()
        if mode < 0.4:
            line = rng.choice(lines)
            a = rng.randrange(0, max(1, len(line)))
            out.append(line[a:a + rng.randrange(1, 120)].encode("utf-8"))
        elif mode < 0.8:
            parts = []
            for _ in range(rng.randrange(1, 12)):
                if rng.random() < 0.5:
                    line = rng.choice(lines)
                    a = rng.randrange(0, max(1, len(line)))
                    parts.append(line[a:a + rng.randrange(1, 20)])
                else:
                    parts.append(rng.choice(pieces))
            out.append("".join(parts).encode("utf-8"))
        else:
            n = rng.randrange(1, 24)
            out.append(bytes(rng.choice([rng.randrange(0, 256), rng.randrange(32, 127)])
                             for _ in range(n)))
    return out


def encode_cases(tokenizers_by_kind, strings, with_special):
    """with_special: also record encode(text) (the post-processor's tokens added)."""
    cases = []
    for kind, tok in tokenizers_by_kind.items():
        for raw in strings:
            text = raw.decode("utf-8", errors="replace")
            ids = tok.encode(text, add_special_tokens=False).ids
            case = {"tokenizer": kind, "text_hex": raw.hex(), "ids": ids,
                    "decoded_hex": tok.decode(ids, skip_special_tokens=True).encode("utf-8").hex()}
            if with_special:
                case["ids_special"] = tok.encode(text).ids
            cases.append(case)
    return cases


def decode_cases(tokenizers_by_kind, rng, count):
    cases = []
    for kind, tok in tokenizers_by_kind.items():
        size = tok.get_vocab_size(with_added_tokens=True)
        for _ in range(count):
            ids = [rng.randrange(0, size) for _ in range(rng.randrange(1, 12))]
            cases.append({"tokenizer": kind, "ids": ids,
                          "decoded_hex": tok.decode(ids, skip_special_tokens=True)
                          .encode("utf-8").hex()})
    return cases


def load_committed():
    from tokenizers import Tokenizer
    return {k: Tokenizer.from_file(os.path.join(OUT, k, "tokenizer.json")) for k in KINDS}


def compute_expected(toks, seed):
    import tokenizers
    rng = random.Random(seed)
    lines = training_lines()
    return {"generator": "tools/make_hf_tokenizer_fixtures.py",
            "tokenizers_version": tokenizers.__version__,
            "encode": encode_cases(toks, fixed_strings(), True) +
            encode_cases(toks, random_strings(rng, lines, 160), False),
            "decode": decode_cases(toks, rng, 40)}


def same_results(a, b):
    return a["encode"] == b["encode"] and a["decode"] == b["decode"]


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--check", action="store_true")
    p.add_argument("--cases-out", default=None)
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args()
    try:
        import tokenizers  # noqa: F401
    except ImportError as e:
        print(f"SKIP: the reference `tokenizers` package is not importable ({e}); "
              "pip install tokenizers", file=sys.stderr)
        return 77
    expected_path = os.path.join(OUT, "expected.json")
    if args.check:
        toks = load_committed()
        with open(expected_path, encoding="utf-8") as f:
            committed = json.load(f)
        fresh = compute_expected(toks, args.seed)
        if not same_results(committed, fresh):
            bad = [(c["tokenizer"], c["text_hex"]) for c, d in
                   zip(committed["encode"], fresh["encode"]) if c != d][:5]
            print(f"FAIL: {expected_path} differs from tokenizers {fresh['tokenizers_version']} "
                  f"(committed with {committed.get('tokenizers_version')}); first cases: {bad}",
                  file=sys.stderr)
            return 1
        print(f"ok: {len(committed['encode'])} encode and {len(committed['decode'])} decode "
              f"cases equal tokenizers {fresh['tokenizers_version']}")
        if args.cases_out:
            import time
            seed = int(time.time())
            rng = random.Random(seed)
            strings = random_strings(rng, training_lines(), 300)
            cases = {"seed": seed, "encode": encode_cases(toks, strings, True),
                     "decode": decode_cases(toks, rng, 60)}
            with open(args.cases_out, "w", encoding="utf-8") as f:
                json.dump(cases, f)
            print(f"wrote fresh cases (seed {seed}) to {args.cases_out}")
        return 0
    toks = {}
    for kind in KINDS:
        tok = build_byte_level(kind) if kind in ("gpt2", "llama3", "qwen2") else \
            build_sentencepiece_style(kind)
        write_tokenizer(kind, tok)
    toks = load_committed()  # what the C++ side reads, re-loaded
    expected = compute_expected(toks, args.seed)
    with open(expected_path, "w", encoding="utf-8") as f:
        json.dump(expected, f, separators=(",", ":"))
        f.write("\n")
    print(f"wrote {len(KINDS)} tokenizers and {len(expected['encode'])} encode / "
          f"{len(expected['decode'])} decode cases to {OUT}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
