#!/usr/bin/env bash
# Creates models/.cache/venv-transformers: Debian's python3 (its python3-torch, a CPU build of
# torch 1.13, and numpy) plus PyPI's transformers, pinned to the newest release line known to run
# LlamaForCausalLM's forward on torch 1.13 (4.46.x; later lines want torch >= 2). Used by the
# SmolLM2 parity test (tests/integration/smollm2_parity_test.py) as the reference implementation.
# Note: transformers' generate() fails on this torch (its torch.distributed.fsdp import breaks on
# Python 3.11); the forward, which is all the test needs, works.
#
#   bash tools/make_transformers_venv.sh        # then: ctest --test-dir build -R smollm2
set -euo pipefail
cd "$(dirname "$0")/.."
VENV=${SPQR_TRANSFORMERS_VENV:-models/.cache/venv-transformers}
TRANSFORMERS=transformers==4.46.3
if [[ ! -x "$VENV/bin/python" ]]; then
  /usr/bin/python3 -m venv --system-site-packages "$VENV"
fi
"$VENV/bin/python" -m pip install --quiet "$TRANSFORMERS"
"$VENV/bin/python" -c 'import torch, transformers; print("torch", torch.__version__, "transformers", transformers.__version__)'
echo "$VENV/bin/python"
