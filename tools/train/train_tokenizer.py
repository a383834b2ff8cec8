#!/usr/bin/python3
"""Trains the reference model's SentencePiece tokenizer on the corpus's train split.

BPE with byte fallback (every UTF-8 byte has a piece, so no text is ever <unk>), LLaMA-style
settings: identity normalization, a dummy-prefix space, whitespace kept (reStructuredText is
indentation-heavy), digits split, ids unk=0 bos=1 eos=2 and no pad. Deterministic: one thread, no
sampling or shuffling of input lines, and the lines are fed from memory so no file path is stored in
the model proto; the same train.txt gives the same tokenizer.model bytes.

--check compares the sha256 of the result with tools/train/TOKENIZER.sha256 (the tokenizer of the
committed corpus manifest, vocab 4096) and exits 1 on a difference.

Usage: /usr/bin/python3 tools/train/train_tokenizer.py [--train .corpus/train.txt]
           [--out .corpus/tokenizer/tokenizer.model] [--vocab 4096] [--check]
"""

import argparse
import hashlib
import io
import os
import sys
import time

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def train(train_path, vocab_size, seed=0):
    import sentencepiece as spm

    with open(train_path, "r", encoding="utf-8") as f:
        lines = [line.rstrip("\n") for line in f]
    lines = [line for line in lines if line.strip()]
    spm.set_random_generator_seed(seed)
    model = io.BytesIO()
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter(lines),
        model_writer=model,
        model_type="bpe",
        vocab_size=vocab_size,
        byte_fallback=True,
        character_coverage=0.9999,
        split_digits=True,
        normalization_rule_name="identity",
        add_dummy_prefix=True,
        remove_extra_whitespaces=False,
        allow_whitespace_only_pieces=True,
        max_sentence_length=16384,
        unk_id=0, bos_id=1, eos_id=2, pad_id=-1,
        num_threads=1,
        input_sentence_size=0,
        shuffle_input_sentence=False,
        minloglevel=1,
    )
    return model.getvalue(), len(lines)


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--train", default=os.path.join(REPO, ".corpus", "train.txt"))
    p.add_argument("--out", default=os.path.join(REPO, ".corpus", "tokenizer", "tokenizer.model"))
    p.add_argument("--vocab", type=int, default=4096)
    p.add_argument("--check", action="store_true", help="compare with tools/train/TOKENIZER.sha256")
    args = p.parse_args()
    start = time.time()
    data, n_lines = train(args.train, args.vocab)
    os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
    with open(args.out, "wb") as f:
        f.write(data)
    print(f"wrote {args.out}: vocab {args.vocab}, {n_lines} training lines, "
          f"{time.time() - start:.0f} s", file=sys.stderr)
    if args.check:
        digest = hashlib.sha256(data).hexdigest()
        with open(os.path.join(os.path.dirname(os.path.abspath(__file__)), "TOKENIZER.sha256")) as f:
            want = f.read().split()[0]
        if digest != want:
            print(f"tokenizer sha256 {digest} != committed {want}", file=sys.stderr)
            return 1
        print("tokenizer matches tools/train/TOKENIZER.sha256", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
