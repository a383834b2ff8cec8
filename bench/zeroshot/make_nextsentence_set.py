#!/usr/bin/python3
"""Builds the next-sentence multiple-choice set of the zero-shot check (issue 16, item 5).

Source: the TEST split of the reference-model corpus (.corpus/test.txt and .corpus/manifest.json
from tools/corpus/build_corpus.py: the documentation sources of the Debian packages linux-doc-6.1
and python3.11-doc, versions and .deb sha256s pinned in tools/corpus/packages.json). The split is
taken off by file and never used for training or calibration, so it is held out for
models/reference; SmolLM2's pretraining data is not known (public kernel and Python docs may be in
it), which does not matter for a bf16-vs-SpQR comparison of the same model.

Construction (deterministic; no RNG whose algorithm may change between Python versions: every
"random" choice is an order by sha256(seed, purpose, key)):
  1. The split is cut into documents with the manifest (byte lengths, each document's sha256
     checked), and each document into paragraphs at blank lines.
  2. A paragraph counts as prose when none of its lines is indented (indented RST is code, quotes,
     list bodies), none is a heading underline or table border, and it starts with none of the RST
     markers `..` `:` `|` `+` `*` `-` `#` `>>>` or an enumerator. Its lines are joined with spaces.
  3. Prose is cut into sentences after `.`, `!` or `?` followed by a space and an upper-case
     letter, except after common abbreviations (e.g., i.e., etc., ...).
  4. A sentence is a usable target or distractor when it starts with an upper-case letter, ends
     with `.`, has 40 to 160 bytes, is ASCII and has no RST role/literal markup (`` ` ``, `|`,
     `*`, `_`-references) and no `::`.
  5. Items: every usable sentence that is not the first of its paragraph. Context = the sentences
     before it in the same paragraph, as many (counted from the target backwards) as fit in
     --max-context-bytes, at least one. Continuation = " " + the sentence (lm-eval's convention:
     the space belongs to the continuation).
  6. Distractors (--choices - 1 of them): usable sentences from OTHER documents whose byte length
     is within [0.8, 1.25] x the target's, distinct and different from the target, taken in the
     order of sha256(seed, "distractor", item key, sentence). Length matching keeps the unnormalized
     sum of log-probs from preferring short choices by construction.
  7. Selection: items in the order of sha256(seed, "item", key), at most --per-document items per
     document, until --items; then sorted by (document, position). The gold choice's position is
     sha256(seed, "label", key) mod --choices.

Output: JSON lines, one item each: {"id", "doc", "context", "choices": [4 continuations],
"label": index of the true next sentence}, preceded by nothing else; --out (default
bench/zeroshot/nextsentence-test.jsonl). Prints the output's sha256 and counts; --check compares
with the committed file instead of writing.

Usage: /usr/bin/python3 bench/zeroshot/make_nextsentence_set.py [--corpus .corpus] [--check]
"""

import argparse
import hashlib
import json
import os
import re
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(os.path.dirname(HERE))
sys.path.insert(0, os.path.join(REPO, "tools", "corpus"))
from make_heldout_slice import load_test_split, sha256_bytes  # noqa: E402

DEFAULT_OUT = os.path.join(HERE, "nextsentence-test.jsonl")
SEPARATOR = b"\n\n"
ABBREVIATIONS = ("e.g.", "i.e.", "etc.", "vs.", "cf.", "Fig.", "No.", "Dr.", "Mr.", "Ms.",
                 "approx.", "resp.", "Inc.", "Ltd.", "al.", "Co.", "St.")
PARAGRAPH_MARKERS = ("..", ":", "|", "+", "*", "-", "#", ">>>", "=", "`")
MIN_SENTENCE, MAX_SENTENCE = 40, 160
LENGTH_RATIO = (0.8, 1.25)


def rank(seed, purpose, key):
    return hashlib.sha256(f"{seed}\x00{purpose}\x00{key}".encode("utf-8")).hexdigest()


def documents(test, manifest):
    """(path, text) of each test document, cut by the manifest's byte lengths, sha256 checked."""
    offset = 0
    for entry in (f for f in manifest["files"] if f["split"] == "test"):
        data = test[offset:offset + entry["bytes"]]
        if sha256_bytes(data) != entry["sha256"]:
            sys.exit(f"error: test.txt at byte {offset}: {entry['path']} does not match its "
                     f"manifest sha256")
        yield entry["path"], data.decode("utf-8")
        offset += entry["bytes"] + len(SEPARATOR)


def is_prose(lines):
    if not lines:
        return False
    if re.match(r"^(\d+|[a-zA-Z#])[.)]\s", lines[0]):
        return False  # an enumerated list item
    if lines[0].startswith(PARAGRAPH_MARKERS):
        return False
    for line in lines:
        if line[:1].isspace():
            return False
        if re.fullmatch(r"[=\-~^\"'`#*+.:_<>| ]+", line):
            return False  # heading underline or table border
    return True


def sentences(paragraph):
    """Cuts joined prose into sentences (see step 3 of the module docstring)."""
    out, start = [], 0
    for match in re.finditer(r"[.!?]\s+(?=[A-Z])", paragraph):
        end = match.start() + 1
        head = paragraph[start:end]
        if any(head.endswith(" " + a) or head == a for a in ABBREVIATIONS):
            continue
        if re.search(r"\b[A-Z]\.$", head):
            continue  # an initial ("J. Smith") or "Section A."
        out.append(head.strip())
        start = match.end()
    tail = paragraph[start:].strip()
    if tail:
        out.append(tail)
    return out


def usable(sentence):
    n = len(sentence.encode("utf-8"))
    if not (MIN_SENTENCE <= n <= MAX_SENTENCE) or not sentence.isascii():
        return False
    if not sentence[0].isupper() or not sentence.endswith(".") or sentence.endswith(".."):
        return False
    if any(mark in sentence for mark in ("`", "|", "*", "::", "_ ", "<", ">", "[", "]")):
        return False
    return not sentence.endswith("_.")


def build(test, manifest, seed, n_items, n_choices, max_context, per_document):
    candidates = []  # (doc, paragraph index, sentence index, context sentences, target)
    pool = []  # (doc, sentence): distractor pool
    for path, text in documents(test, manifest):
        for p, block in enumerate(re.split(r"\n[ \t]*\n", text)):
            lines = [line for line in block.split("\n") if line.strip()]
            if not is_prose(lines):
                continue
            sents = sentences(" ".join(line.strip() for line in lines))
            for i, sentence in enumerate(sents):
                if not usable(sentence):
                    continue
                pool.append((path, sentence))
                if i == 0:
                    continue
                context = []
                for prev in reversed(sents[:i]):
                    joined = " ".join([prev] + context)
                    if len(joined.encode("utf-8")) > max_context:
                        break
                    context.insert(0, prev)
                if context:
                    candidates.append((path, p, i, " ".join(context), sentence))
    pool = sorted(set(pool))
    by_length = sorted(pool, key=lambda x: len(x[1].encode("utf-8")))

    chosen, per_doc = [], {}
    order = sorted(candidates, key=lambda c: rank(seed, "item", f"{c[0]}#{c[1]}#{c[2]}"))
    for cand in order:
        if len(chosen) == n_items:
            break
        path, p, i, context, target = cand
        if per_doc.get(path, 0) >= per_document:
            continue
        key = f"{path}#{p}#{i}"
        n = len(target.encode("utf-8"))
        lo, hi = n * LENGTH_RATIO[0], n * LENGTH_RATIO[1]
        options = {s for d, s in by_length
                   if d != path and lo <= len(s.encode("utf-8")) <= hi and s != target}
        if len(options) < n_choices - 1:
            continue
        distractors = sorted(options, key=lambda s: rank(seed, "distractor", f"{key}\x00{s}"))
        distractors = distractors[:n_choices - 1]
        label = int(rank(seed, "label", key), 16) % n_choices
        choices = [" " + s for s in distractors]
        choices.insert(label, " " + target)
        chosen.append({"doc": path, "paragraph": p, "sentence": i, "context": context,
                       "choices": choices, "label": label})
        per_doc[path] = per_doc.get(path, 0) + 1
    if len(chosen) < n_items:
        sys.exit(f"error: only {len(chosen)} items could be built (asked for {n_items})")
    chosen.sort(key=lambda it: (it["doc"], it["paragraph"], it["sentence"]))
    for n, item in enumerate(chosen):
        item["id"] = n
    stats = {"candidates": len(candidates), "pool": len(pool),
             "documents": len(per_doc)}
    return chosen, stats


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--corpus", default=os.path.join(REPO, ".corpus"))
    parser.add_argument("--out", default=DEFAULT_OUT)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--items", type=int, default=200)
    parser.add_argument("--choices", type=int, default=4)
    parser.add_argument("--max-context-bytes", type=int, default=320)
    parser.add_argument("--per-document", type=int, default=3)
    parser.add_argument("--check", action="store_true",
                        help="compare with the file at --out instead of writing it")
    args = parser.parse_args()
    test, manifest = load_test_split(args.corpus)
    items, stats = build(test, manifest, args.seed, args.items, args.choices,
                         args.max_context_bytes, args.per_document)
    keys = ("id", "doc", "context", "choices", "label")
    data = "".join(json.dumps({k: it[k] for k in keys}, ensure_ascii=False) + "\n"
                   for it in items).encode("utf-8")
    digest = sha256_bytes(data)
    labels = [it["label"] for it in items]
    print(f"{len(items)} items from {stats['documents']} documents "
          f"({stats['candidates']} candidate targets, {stats['pool']} pool sentences); labels "
          f"{[labels.count(k) for k in range(args.choices)]}; {len(data):,} bytes, sha256 {digest}")
    if args.check:
        with open(args.out, "rb") as f:
            committed = f.read()
        if committed != data:
            sys.exit(f"error: {args.out} (sha256 {sha256_bytes(committed)}) differs from the "
                     f"rebuild")
        print(f"{args.out}: identical")
        return
    with open(args.out, "wb") as f:
        f.write(data)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
