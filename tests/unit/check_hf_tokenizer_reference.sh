#!/usr/bin/env bash
# Re-runs the tokenizer.json reference: the committed expectations must still equal Hugging Face
# tokenizers' output (tools/make_hf_tokenizer_fixtures.py --check), and the C++ tokenizer must
# match it on fresh random strings. Exits 77 (ctest: skipped) when `tokenizers` is not importable.
# Usage: check_hf_tokenizer_reference.sh PYTHON HF_TOKENIZER_TEST_BINARY
set -euo pipefail
python=$1
test_binary=$2
repo=$(cd "$(dirname "$0")/../.." && pwd)
if ! "$python" -c "import tokenizers" 2>/dev/null; then
  echo "SKIP: $python cannot import the reference package tokenizers (pip install tokenizers)"
  exit 77
fi
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
"$python" "$repo/tools/make_hf_tokenizer_fixtures.py" --check --cases-out "$tmp/fresh.json"
SPQR_HF_TOKENIZER_CASES="$tmp/fresh.json" "$test_binary" \
  --gtest_filter='HfTokenizerTest.MatchesTheReferenceOnFreshCases'
