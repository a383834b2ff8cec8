#!/usr/bin/env bash
# Register / shared memory / spill report of every CUDA kernel, from ptxas (-Xptxas -v), for the
# architectures the build compiles for. Recompiles each engine/backend/cuda/*.cu with the exact
# command of the configured build (compile_commands.json) plus -Xptxas -v, output discarded, and
# prints one line per kernel and architecture:
#   <file> <arch> <kernel (demangled)> registers=<n> spill_stores=<b> spill_loads=<b> stack=<b> smem=<b>
# Usage: tools/cuda-resource-report.sh [build-dir] > bench/results/cuda-resources-sm90.txt
#        SPQR_REPORT_ONLY=<regex> limits it to the .cu files whose path matches (to add the lines of
#        new kernels to the record without recompiling every file).
# The build itself fails on any spill (ptxas -warn-spills -Werror in engine/CMakeLists.txt); this
# report is the record of how close each kernel is.
set -euo pipefail
cd "$(dirname "$0")/.."
BUILD_DIR=${1:-build}
/usr/bin/python3 - "$BUILD_DIR" <<'PY'
import json, os, re, shlex, subprocess, sys
build = sys.argv[1]
only = re.compile(os.environ.get("SPQR_REPORT_ONLY", ""))
commands = json.load(open(f"{build}/compile_commands.json"))
rows = []
for c in commands:
    if not c["file"].endswith(".cu") or "nvcc" not in c["command"].split()[0]:
        continue
    if not only.search(c["file"]):
        continue
    args = shlex.split(c["command"])
    out = args.index("-o")
    args[out + 1] = "/dev/null"
    args += ["-Xptxas", "-v"]
    r = subprocess.run(args, cwd=c["directory"], capture_output=True, text=True)
    if r.returncode != 0:
        sys.exit(f"compile failed: {c['file']}\n{r.stderr}")
    name = c["file"].split("/engine/")[-1]
    kernel = arch = None
    info = {}
    for line in r.stderr.splitlines():
        m = re.search(r"Compiling entry function '(\S+)' for '(\S+)'", line)
        if m:
            kernel, arch = m.group(1), m.group(2)
            info = {}
            continue
        m = re.search(r"(\d+) bytes stack frame, (\d+) bytes spill stores, (\d+) bytes spill loads", line)
        if m and kernel:
            info.update(stack=m.group(1), spill_stores=m.group(2), spill_loads=m.group(3))
            continue
        m = re.search(r"Used (\d+) registers(.*)", line)
        if m and kernel:
            smem = re.search(r"(\d+) bytes smem", m.group(2))
            demangled = subprocess.run(["c++filt", kernel], capture_output=True, text=True).stdout.strip()
            rows.append(f"{name} {arch} {demangled} registers={m.group(1)} "
                        f"spill_stores={info.get('spill_stores', '?')} spill_loads={info.get('spill_loads', '?')} "
                        f"stack={info.get('stack', '?')} smem={smem.group(1) if smem else 0}")
            kernel = None
for row in sorted(rows):
    print(row)
PY
