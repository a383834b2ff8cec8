#!/usr/bin/env bash
# The first GPU session as one command (docs/gpu.md). Here (no GPU needed): build the GPU binaries
# for sm_90 with tools/gpu-bundle.sh, plus spqr-dump-logits, quantize the reference model with SpQR
# (w3, 16x16 groups, 3-bit statistics, tau 0.2) and put the models and the logits check into the
# bundle, then print the one `run` call to make. There (inside that call, at most ~8 minutes):
#
#   1. the GPU test suite natively (parity of every CUDA op with its CPU twin) and the GPU
#      benchmarks: .gpu-bundle/run.sh -> $OUT/results.json, env.json, run.log
#   2. tools/gpu_logits_check.py: the CUDA backend end to end against transformers'
#      LlamaForCausalLM (dense models) and against our CPU backend (the SpQR model)
#      -> $OUT/logits_check.json
#
#   tools/gpu-check.sh              # build + bundle here
#   tools/gpu-check.sh --no-build   # re-bundle what build-gpu-bundle/ holds
#
# Commit what comes back under bench/results/gpu/<date>-<device>/ (docs/gpu.md).
set -euo pipefail

ROOT=$(cd "$(dirname "$0")/.." && pwd)
BUILD=${SPQR_GPU_BUILD_DIR:-$ROOT/build-gpu-bundle}
BUNDLE=$ROOT/.gpu-bundle

bundle_args=()
for arg in "$@"; do
  case $arg in
    --no-build) bundle_args+=(--no-build) ;;
    -h | --help) sed -n '2,17p' "$0"; exit 0 ;;
    *) echo "gpu-check: unknown argument $arg" >&2; exit 2 ;;
  esac
done

SPQR_GPU_EXTRA_TARGETS="spqr-dump-logits spqr-quantize" bash "$ROOT/tools/gpu-bundle.sh" \
  "${bundle_args[@]}" >"$BUILD.gpu-check.log" 2>&1 ||
  { tail -40 "$BUILD.gpu-check.log"; echo "gpu-check: gpu-bundle.sh failed" >&2; exit 1; }
# spqr-quantize runs here, not there: keep it out of the bundle.
quantize=$(find "$BUILD" -type f -name spqr-quantize -perm -u+x | head -1)
rm -f "$BUNDLE/bin/spqr-quantize"

# The dense models travel with the working tree (models/reference, tests/data/test-model); only
# the SpQR model made here is bundled (the run tool carries 64 MiB in all, tree included).
mkdir -p "$BUNDLE/models"
echo "gpu-check: quantizing models/reference with SpQR (w3 16x16, 3-bit statistics, tau 0.2)"
"$quantize" --model "$ROOT/models/reference" --out "$BUNDLE/models/reference-spqr" --force \
  --calibration "$ROOT/models/reference/calibration.txt" --method spqr --wbits 3 --beta1 16 \
  --beta2 16 --stats_bits 3 --tau 0.2 --nsamples 16 --seqlen 256 --seed 0 \
  >"$BUILD.gpu-check-quantize.log" 2>&1 ||
  { tail -20 "$BUILD.gpu-check-quantize.log"; echo "gpu-check: quantize failed" >&2; exit 1; }
cp "$ROOT/tools/gpu_logits_check.py" "$BUNDLE/gpu_logits_check.py"

cat >"$BUNDLE/check.sh" <<'CHECK'
#!/usr/bin/env bash
# Runs on the device, from the repository root (see tools/gpu-check.sh): tests + benchmarks, then
# the logits check.
HERE=$(cd "$(dirname "$0")" && pwd)
OUT=${OUT:-$PWD/gpu-results}
mkdir -p "$OUT"
status=0
timeout 360 bash "$HERE/run.sh" || status=1
# The same library paths run.sh uses (cuBLAS: the toolkit's, else PyTorch's cu13 wheel's).
cublas_dir=""
for d in /usr/local/cuda/lib64 /usr/local/cuda/targets/x86_64-linux/lib \
  $(find /opt /usr/local/lib /usr/lib -name 'libcublas.so.13' -printf '%h\n' 2>/dev/null | sort -u); do
  if [[ -e $d/libcublas.so.13 && -e $d/libcublasLt.so.13 ]]; then cublas_dir=$d; break; fi
done
export LD_LIBRARY_PATH=$HERE/lib${cublas_dir:+:$cublas_dir}${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}
if ldd "$HERE/bin/spqr-dump-logits" 2>&1 | grep -Eq "(GLIBCXX|CXXABI|GCC)_[0-9.]*' not found"; then
  export LD_LIBRARY_PATH=$LD_LIBRARY_PATH:$HERE/lib-fallback
fi
timeout 120 python3 "$HERE/gpu_logits_check.py" --dump-logits "$HERE/bin/spqr-dump-logits" \
  --out "$OUT/logits_check.json" \
  --vs-transformers models/reference tests/data/test-model \
  --vs-cpu "$HERE/models/reference-spqr" models/reference 2>&1 |
  tee "$OUT/logits_check.log" || status=1
[[ ${PIPESTATUS[0]} -eq 0 ]] || status=1
echo "check.sh: exit $status (results in $OUT)"
exit $status
CHECK
chmod +x "$BUNDLE/check.sh"

size=$(du -sm "$BUNDLE" | cut -f1)
tree=$(git -C "$ROOT" ls-files -z | (cd "$ROOT" && xargs -0 du -cm 2>/dev/null) | tail -1 | cut -f1)
echo "gpu-check: bundle ready in .gpu-bundle/ (${size} MiB; the tracked tree ${tree} MiB; the run tool carries 64 MiB in all)"
if ((size + tree > 60)); then
  echo "gpu-check: WARNING: bundle + tree exceed 60 MiB; the run may refuse to carry them" >&2
fi
echo "  run(command=\"bash .gpu-bundle/check.sh\", carry=[\".gpu-bundle\"], timeout_s=540)"
