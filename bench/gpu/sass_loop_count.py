#!/usr/bin/env python3
"""Instructions per weight of SpqrGpuMmaKernel<W, NT>'s chunk loop, counted from its SASS (what
bench/gpu/perf_model.py's MMA_SASS table holds). The CUDA toolkit here has no cuobjdump/nvdisasm;
the PyPI wheels nvidia-cuda-cuobjdump and nvidia-cuda-nvdisasm provide them:

  cuobjdump -sass build/engine/CMakeFiles/spqr_engine_cuda.dir/backend/cuda/spqr_gpu_linear.cu.o \\
      > /tmp/linear.sass   # nvdisasm on PATH
  bench/gpu/sass_loop_count.py /tmp/linear.sass

It finds the chunk loop (the backward branch after the last HMMA) and walks one iteration,
deciding its branches as a chunk in the middle of a layer takes them: the next chunk is staged,
its columns lie inside n, beta1 divides 128 (the group offsets are not recomputed). The statistics
branches come as pairs (a "fresh group" gate followed at once by the statistics-kind branch),
in code order: the decodes of units 1..3 (and, when the compiler branches around the statistics
loads instead of predicating them, first the loads of units 1..3 for row g and for row g + 8);
the other predicated branches after the group bookkeeping choose the statistics kind. A
predicated-off instruction still issues, so it counts. Each scenario prints instructions per chunk and lane
(64 weights) and per weight.
"""
import re
import sys

SCENARIOS = [("beta1 >= 32, bilevel", {0}, True), ("beta1 16, bilevel", {0, 2}, True),
             ("beta1 8, bilevel", {0, 1, 2, 3}, True), ("beta1 16, fp16 stats", {0, 2}, False)]


def functions(text):
    for m in re.finditer(r"Function : (\S+)\n", text):
        end = text.find("Function :", m.end())
        yield m.group(1), text[m.end():end if end > 0 else None]


def count(body):
    ins = []
    for line in body.splitlines():
        m = re.match(r"\s*/\*([0-9a-f]{4,})\*/\s+(.*?);", line)
        if m:
            ins.append((int(m.group(1), 16), m.group(2).strip()))
    at = {a: k for k, (a, _) in enumerate(ins)}
    hmma = [k for k, (_, s) in enumerate(ins) if "HMMA" in s]
    back = next(k for k in range(hmma[-1], len(ins))
                if "BRA" in ins[k][1] and int(ins[k][1].split()[-1], 16) < ins[k][0])
    head = at[int(ins[back][1].split()[-1], 16)]
    pbra = [k for k in range(head, back) if re.match(r"@!?P\d\s+BRA", ins[k][1])]
    gates = [k for k in pbra if k + 1 in pbra]
    kinds = [k + 1 for k in gates]
    depbar = next(k for k in range(head, back) if ins[k][1].startswith("LDGDEPBAR"))
    first_after = min(k for k in pbra if k > depbar)  # `if (r128 != 0)`: skipped
    lone_kinds = [k for k in pbra if k > first_after and k not in gates and k not in kinds]
    # 9 gates when the statistics loads branch per group, 3 when they are predicated (decodes of
    # units 1..3 only).
    assert len(gates) in (3, 9), f"expected 3 or 9 fresh-group gates, found {len(gates)}"
    out = {}
    for name, fresh, bilevel in SCENARIOS:
        def taken(k):
            if k in gates:
                return gates.index(k) % 3 + 1 not in fresh  # units 1..3 of each triple
            if k in kinds or k in lone_kinds:
                return not bilevel
            return k == first_after
        k, n = head, 0
        while True:
            n += 1
            if k == back:
                break
            m = re.match(r"(@!?P\d\s+)?BRA\s+(0x[0-9a-f]+)", ins[k][1])
            if m and (not m.group(1) or taken(k)):
                k = at[int(m.group(2), 16)]
            else:
                k += 1
        out[name] = n
    return out


def main():
    text = open(sys.argv[1]).read()
    for name, body in functions(text):
        m = re.search(r"SpqrGpuMmaKernelILi(\d)ELi(\d)E", name)
        if not m:
            continue
        counts = count(body)
        print(f"W={m.group(1)} NT={m.group(2)}: " + ", ".join(
            f"{k}: {v} ({v / 64:.2f}/weight)" for k, v in counts.items()))


if __name__ == "__main__":
    main()
