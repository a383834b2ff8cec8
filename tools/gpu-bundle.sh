#!/usr/bin/env bash
# Builds the GPU binaries here (Release, CUDA for sm_90, portable CPU code) and packs them, with the
# shared libraries they need that the device machine may lack, into .gpu-bundle/ (git-ignored), so
# that a GPU session is one `run` call (see docs/gpu.md and ../shared/docs/gpu-workflow.md):
#
#   tools/gpu-bundle.sh                 # build + bundle the default targets, print the run command
#   tools/gpu-bundle.sh --no-build      # re-bundle what build-gpu-bundle/ already holds
#   tools/gpu-bundle.sh --with-server   # also bundle spqr-server
#   tools/gpu-bundle.sh cuda_ops_test   # bundle only the named targets
#
# What goes in: the GPU test binaries (and, once they exist, the benchmark binaries and
# spqr-server), stripped; every shared library `ldd` shows them loading except glibc's own, the
# NVIDIA driver's (libcuda, libnvidia-*), and cuBLAS/cuBLASLt (about 570 MiB, far over the 64 MiB a
# run carries: the device machine has CUDA 13 and PyTorch's cu13 wheels, and .gpu-bundle/run.sh
# finds them there). libstdc++/libgcc_s go to lib-fallback/, used only if the device's are too old.
set -euo pipefail

ROOT=$(cd "$(dirname "$0")/.." && pwd)
BUILD=${SPQR_GPU_BUILD_DIR:-$ROOT/build-gpu-bundle}
BUNDLE=$ROOT/.gpu-bundle
MAX_BUNDLE_MIB=48  # leaves room for the working tree within the run tool's 64 MiB
# Default targets: GPU tests always; benchmarks and the server when the tree defines them.
DEFAULT_TARGETS=(cuda_status_test cuda_ops_test cublas_gemm_test spqr_kernels_test ptx_wrappers_test
                 paged_attention_test spqr_gpu_linear_test spqr_gpu_mma_test)
# Optional: whichever GPU benchmark targets the tree defines (spqr-bench-gpu* / spqr-bench-cuda*
# or *_bench; run.sh runs them with Google Benchmark's --benchmark_out flags). The server only
# with --with-server (it adds gRPC and protobuf libraries and build time).
OPTIONAL_TARGET_RE='^(spqr-bench-(gpu|cuda)[A-Za-z0-9_-]*|[A-Za-z0-9_]+_bench)$'

build=1
with_server=0
targets=()
for arg in "$@"; do
  case $arg in
    --no-build) build=0 ;;
    --with-server) with_server=1 ;;
    -h | --help) sed -n '2,17p' "$0"; exit 0 ;;
    -*) echo "gpu-bundle: unknown option $arg" >&2; exit 2 ;;
    *) targets+=("$arg") ;;
  esac
done

if ((build)); then
  mkdir -p "$BUILD"
  cmake -S "$ROOT" -B "$BUILD" -G Ninja -DCMAKE_BUILD_TYPE=Release -DSPQR_CUDA=ON \
    -DSPQR_CUDA_ARCHITECTURES=90 -DSPQR_NATIVE=OFF >"$BUILD/gpu-bundle.configure.log" 2>&1 ||
    { tail -30 "$BUILD/gpu-bundle.configure.log"; echo "gpu-bundle: configure failed" >&2; exit 1; }
fi
[[ -f $BUILD/build.ninja ]] || { echo "gpu-bundle: no build in $BUILD (drop --no-build)" >&2; exit 1; }
if ((${#targets[@]} == 0)); then
  targets=("${DEFAULT_TARGETS[@]}")
  known=$(cmake --build "$BUILD" --target help 2>/dev/null | sed -n 's/^\([^:]*\): .*/\1/p')
  while read -r t; do
    [[ -n $t ]] && targets+=("$t")
  done < <(grep -E "$OPTIONAL_TARGET_RE" <<<"$known" || true)
  if ((with_server)); then targets+=(spqr-server); fi
  # More targets from the environment (tools/gpu-check.sh adds spqr-dump-logits).
  for t in ${SPQR_GPU_EXTRA_TARGETS:-}; do targets+=("$t"); done
fi
if ((build)); then
  echo "gpu-bundle: building ${targets[*]} in $BUILD"
  cmake --build "$BUILD" --target "${targets[@]}" -j"$(nproc)"
fi

rm -rf "$BUNDLE"
mkdir -p "$BUNDLE/bin" "$BUNDLE/lib" "$BUNDLE/lib-fallback"
for t in "${targets[@]}"; do
  exe=$(find "$BUILD" -type f -name "$t" -perm -u+x | head -1)
  [[ -n $exe ]] || { echo "gpu-bundle: built target $t not found under $BUILD" >&2; exit 1; }
  cp "$exe" "$BUNDLE/bin/$t"
  strip --strip-unneeded "$BUNDLE/bin/$t"
done

# Libraries: everything ldd resolves, minus glibc, the driver and cuBLAS (see the header).
skip_re='^(linux-vdso|ld-linux|libc\.so|libm\.so|libdl\.so|libpthread\.so|librt\.so|libutil\.so|libresolv\.so|libcuda\.so|libnvidia-|libcublas\.so|libcublasLt\.so)'
fallback_re='^(libstdc\+\+\.so|libgcc_s\.so)'
for exe in "$BUNDLE"/bin/*; do
  ldd "$exe" | awk '$2 == "=>" && $3 ~ /^\// {print $1, $3}'
done | sort -u | while read -r name path; do
  if [[ $name =~ $skip_re ]]; then continue; fi
  dest=$BUNDLE/lib
  if [[ $name =~ $fallback_re ]]; then dest=$BUNDLE/lib-fallback; fi
  cp -L "$path" "$dest/$name"
  chmod u+w "$dest/$name"
  strip --strip-unneeded "$dest/$name" 2>/dev/null || true
done

# Provenance, copied into the results by run.sh.
commit=$(git -C "$ROOT" rev-parse --verify -q HEAD || echo unknown)
dirty=$(git -C "$ROOT" status --porcelain --untracked-files=no 2>/dev/null | grep -c . || true)
cat >"$BUNDLE/manifest.json" <<EOF
{"commit": "$commit", "uncommitted_tracked_changes": $dirty,
 "bundled_at_utc": "$(date -u +%Y-%m-%dT%H:%M:%SZ)",
 "built_on": "$(. /etc/os-release; echo "$PRETTY_NAME"), $(uname -m)",
 "nvcc": "$(/usr/local/cuda/bin/nvcc --version | sed -n 's/.*release \([0-9.]*\).*/\1/p')",
 "cuda_architectures": "90", "build_type": "Release", "native_cpu_code": false,
 "binaries": [$(cd "$BUNDLE/bin" && ls | sed 's/.*/"&"/' | paste -sd, -)]}
EOF

cat >"$BUNDLE/run.sh" <<'RUNNER'
#!/usr/bin/env bash
# Runs the bundled GPU binaries on the device machine (written by tools/gpu-bundle.sh; edit it
# there). Usage, from the repository root there:
#   bash .gpu-bundle/run.sh [binary ...]      # default: every test and benchmark binary
#   GTEST_FILTER='*Rope*' bash .gpu-bundle/run.sh cuda_ops_test
#   SANITIZE=1 bash .gpu-bundle/run.sh        # tests under compute-sanitizer memcheck
# Writes three files to $OUT (./gpu-results when unset): results.json (manifest, environment and
# every binary's raw gtest / Google Benchmark JSON), env.json, run.log. Exit status 1 if anything
# failed.
set -uo pipefail
HERE=$(cd "$(dirname "$0")" && pwd)
OUT=${OUT:-$PWD/gpu-results}
mkdir -p "$OUT"
export GTEST_BRIEF=${GTEST_BRIEF:-1}  # failures and the summary only; the JSON has every test

main() {
RAW=$(mktemp -d)

# cuBLAS is not bundled: use the toolkit's, else PyTorch's cu13 wheel's.
cublas_dir=""
for d in /usr/local/cuda/lib64 /usr/local/cuda/targets/x86_64-linux/lib \
  $(find /opt /usr/local/lib /usr/lib -name 'libcublas.so.13' -printf '%h\n' 2>/dev/null | sort -u); do
  if [[ -e $d/libcublas.so.13 && -e $d/libcublasLt.so.13 ]]; then cublas_dir=$d; break; fi
done
[[ -n $cublas_dir ]] || echo "run.sh: WARNING: no libcublas.so.13 found on this machine"
export LD_LIBRARY_PATH=$HERE/lib${cublas_dir:+:$cublas_dir}${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}
if ldd "$HERE"/bin/* 2>&1 | grep -Eq "(GLIBCXX|CXXABI|GCC)_[0-9.]*' not found|libstdc\+\+.*not found"; then
  echo "run.sh: the system libstdc++ is too old for these binaries: using the bundled one"
  export LD_LIBRARY_PATH=$LD_LIBRARY_PATH:$HERE/lib-fallback
fi
echo "LD_LIBRARY_PATH=$LD_LIBRARY_PATH"
if ldd "$HERE"/bin/* | grep -q "not found"; then
  echo "run.sh: unresolved libraries:"; ldd "$HERE"/bin/* | grep "not found" | sort -u
fi

# The environment, for the record that results are committed with.
{
  echo "date_utc=$(date -u +%Y-%m-%dT%H:%M:%SZ)"
  echo "kernel=$(uname -r)"
  echo "gpu=$(nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.max.sm,clocks.max.mem --format=csv,noheader 2>&1 | head -1)"
  echo "cuda_driver_nvidia_smi=$(nvidia-smi 2>/dev/null | sed -n 's/.*CUDA Version: *\([0-9.]*\).*/\1/p')"
  echo "cublas_dir=$cublas_dir"
  echo "nvcc=$(nvcc --version 2>/dev/null | sed -n 's/.*release \([0-9.]*\).*/\1/p')"
} >"$RAW/env.txt"
cat "$RAW/env.txt"

bins=("$@")
if ((${#bins[@]} == 0)); then
  for b in "$HERE"/bin/*; do
    case $(basename "$b") in *_test | *_bench | spqr-bench-*) bins+=("$(basename "$b")") ;; esac
  done
fi
sanitizer=()
if [[ ${SANITIZE:-0} == 1 ]]; then
  sanitizer=(compute-sanitizer --tool memcheck --error-exitcode 99)
fi
failed=0
for name in "${bins[@]}"; do
  bin=$HERE/bin/$name
  [[ -x $bin ]] || { echo "run.sh: no binary $name"; failed=1; continue; }
  echo "=== $name"
  start_ns=$(date +%s%N)
  case $name in
    *_bench | spqr-bench-*) timeout 540 "$bin" --benchmark_format=console --benchmark_out_format=json \
      --benchmark_out="$RAW/$name.json" ;;
    *) timeout 540 "${sanitizer[@]}" "$bin" --gtest_output="json:$RAW/$name.json" ;;
  esac
  rc=$?
  echo "=== $name exit $rc after $((($(date +%s%N) - start_ns) / 1000000)) ms"
  echo "$rc" >"$RAW/$name.rc"
  ((rc == 0)) || failed=1
done

python3 - "$HERE/manifest.json" "$RAW" "$OUT" <<'PY' || failed=1
import json, os, sys
manifest_path, raw, out = sys.argv[1:4]
env = dict(line.rstrip("\n").split("=", 1) for line in open(os.path.join(raw, "env.txt")) if "=" in line)
results = {"manifest": json.load(open(manifest_path)), "env": env, "binaries": {}}
rows = []
for f in sorted(os.listdir(raw)):
    if not f.endswith(".rc"):
        continue
    name = f[:-3]
    entry = {"exit_code": int(open(os.path.join(raw, f)).read())}
    path = os.path.join(raw, name + ".json")
    if os.path.exists(path):
        try:
            entry["raw"] = json.load(open(path))
        except ValueError as e:
            entry["raw_error"] = str(e)
    results["binaries"][name] = entry
    counts = {"passed": 0, "failed": 0, "skipped": 0}
    for suite in entry.get("raw", {}).get("testsuites", []):
        for t in suite.get("testsuite", []):
            if t.get("failures"):
                counts["failed"] += 1
            elif t.get("result") == "SKIPPED":
                counts["skipped"] += 1
            else:
                counts["passed"] += 1
    bench = len(entry.get("raw", {}).get("benchmarks", []))
    rows.append((name, entry["exit_code"], counts, bench))
json.dump(results, open(os.path.join(out, "results.json"), "w"), indent=1)
json.dump({"manifest": results["manifest"], "env": env}, open(os.path.join(out, "env.json"), "w"), indent=1)
print("\n%-28s %5s %7s %7s %8s %8s" % ("binary", "exit", "passed", "failed", "skipped", "benches"))
for name, rc, c, bench in rows:
    print("%-28s %5d %7d %7d %8d %8d" % (name, rc, c["passed"], c["failed"], c["skipped"], bench))
PY
return $failed
}

main "$@" 2>&1 | tee "$OUT/run.log"
exit "${PIPESTATUS[0]}"
RUNNER
chmod +x "$BUNDLE/run.sh"

size_kib=$(du -sk "$BUNDLE" | cut -f1)
echo "gpu-bundle: $BUNDLE holds $(ls "$BUNDLE/bin" | wc -l) binaries, $(ls "$BUNDLE/lib" | wc -l)+$(ls "$BUNDLE/lib-fallback" | wc -l) libraries, $((size_kib / 1024)) MiB"
if ((size_kib > MAX_BUNDLE_MIB * 1024)); then
  echo "gpu-bundle: over the ${MAX_BUNDLE_MIB} MiB budget; the run tool carries 64 MiB with the tree" >&2
  exit 1
fi
cat <<EOF

Next, on the device (one call; results come back under the files the reply lists):
  run(command="bash .gpu-bundle/run.sh", carry=[".gpu-bundle"], timeout_s=600)
Only some binaries:   run(command="bash .gpu-bundle/run.sh cuda_ops_test", carry=[".gpu-bundle"])
Then commit the raw files (results.json, env.json, run.log) under bench/results/ as docs/gpu.md says.
EOF
