// Wrappers for PTX instructions that CUDA C++ does not expose, each with a host reference
// implementation written from the PTX ISA's definition. nvcc compiling for the device emits the
// instruction; everything else (the CPU harness, host code) runs the reference, which the harness
// tests check against the ISA's examples. Add an instruction here, with its reference and a
// test, before using it in a kernel.
#pragma once

#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <cstdint>
#include <cstdlib>
#include <cstring>

#if !defined(__CUDACC__) && defined(SPQR_CUDA_EMU)
#include <source_location>

#include "engine/backend/cuda/emu/harness.h"
#endif

namespace spqr {

// lop3.b32: any bitwise function of three inputs. kLut is the function's truth table over the
// operand patterns a = 0xF0, b = 0xCC, c = 0xAA, i.e. kLut = f(0xF0, 0xCC, 0xAA); for example
// (a & b) | c has kLut = (0xF0 & 0xCC) | 0xAA = 0xEA.
template <uint8_t kLut>
__host__ __device__ __forceinline__ uint32_t Lop3(uint32_t a, uint32_t b, uint32_t c) {
#if defined(__CUDA_ARCH__)
  uint32_t d;
  asm("lop3.b32 %0, %1, %2, %3, %4;"
      : "=r"(d)
      : "r"(a), "r"(b), "r"(c), "n"(static_cast<int>(kLut)));
  return d;
#else
  uint32_t d = 0;
  for (int i = 0; i < 32; ++i) {
    const int index = (((a >> i) & 1u) << 2) | (((b >> i) & 1u) << 1) | ((c >> i) & 1u);
    d |= ((static_cast<uint32_t>(kLut) >> index) & 1u) << i;
  }
  return d;
#endif
}

// prmt.b32 (default mode): byte i of the result is byte (selector >> 4i) & 7 of the 8-byte value
// {b, a} (a = bytes 0-3, b = bytes 4-7); when bit 3 of that nibble is set, the chosen byte's sign
// bit is replicated over the whole result byte.
__host__ __device__ __forceinline__ uint32_t Prmt(uint32_t a, uint32_t b, uint32_t selector) {
#if defined(__CUDA_ARCH__)
  uint32_t d;
  asm("prmt.b32 %0, %1, %2, %3;" : "=r"(d) : "r"(a), "r"(b), "r"(selector));
  return d;
#else
  const uint64_t v = (static_cast<uint64_t>(b) << 32) | a;
  uint32_t d = 0;
  for (int i = 0; i < 4; ++i) {
    const uint32_t nibble = (selector >> (4 * i)) & 0xfu;
    uint32_t byte = static_cast<uint32_t>(v >> (8 * (nibble & 7u))) & 0xffu;
    if ((nibble & 8u) != 0) byte = (byte & 0x80u) != 0 ? 0xffu : 0x00u;
    d |= byte << (8 * i);
  }
  return d;
#endif
}

// cp.async (sm_80+): copies kBytes (4, 8 or 16; both addresses aligned to it) from global to
// shared memory without blocking the thread. The data is only guaranteed in shared memory after
// CpAsyncWait<N>() has retired its group (and, for other threads to read it, a __syncthreads).
// Under the CPU harness the copy really is deferred: the source is read when the copy is issued
// and shared memory written only when its group is waited for, so a missing commit/wait reads
// the 0xff poison. Plain host code (no harness) copies at once.
template <int kBytes>
__device__ __forceinline__ void CpAsync(void* shared_dst, const void* global_src) {
  static_assert(kBytes == 4 || kBytes == 8 || kBytes == 16, "cp.async copies 4, 8 or 16 bytes");
#if defined(__CUDA_ARCH__)
  const unsigned dst = static_cast<unsigned>(__cvta_generic_to_shared(shared_dst));
  if constexpr (kBytes == 16) {
    asm volatile("cp.async.cg.shared.global [%0], [%1], 16;\n" ::"r"(dst), "l"(global_src));
  } else {
    asm volatile("cp.async.ca.shared.global [%0], [%1], %2;\n" ::"r"(dst), "l"(global_src),
                 "n"(kBytes));
  }
#elif defined(SPQR_CUDA_EMU)
  ::spqr::emu::CpAsyncIssue(shared_dst, global_src, kBytes);
#else
  std::memcpy(shared_dst, global_src, kBytes);
#endif
}

// cp.async.commit_group: the thread's cp.async issued since the last commit form one group.
__device__ __forceinline__ void CpAsyncCommit() {
#if defined(__CUDA_ARCH__)
  asm volatile("cp.async.commit_group;\n" ::);
#elif defined(SPQR_CUDA_EMU)
  ::spqr::emu::CpAsyncCommit();
#endif
}

// cp.async.wait_group N: returns once at most the N most recent committed groups of this thread
// are still in flight.
template <int N>
__device__ __forceinline__ void CpAsyncWait() {
#if defined(__CUDA_ARCH__)
  asm volatile("cp.async.wait_group %0;\n" ::"n"(N));
#elif defined(SPQR_CUDA_EMU)
  ::spqr::emu::CpAsyncWait(N);
#endif
}

// ---- Warp-collective matrix instructions (sm_80+). Every lane of the warp must call them. ----
//
// Fragment layouts (PTX ISA, "Matrix fragments for mma.m16n8k16"), for lane l, g = l / 4,
// t = l % 4; a .f16x2 register holds the lower-indexed element in its low half:
//   A (16x16, row-major): a[0] = A[g][2t, 2t+1], a[1] = A[g+8][2t, 2t+1],
//                         a[2] = A[g][2t+8, 2t+9], a[3] = A[g+8][2t+8, 2t+9]
//   B (16x8, K x N):      b[0] = B[2t, 2t+1][g], b[1] = B[2t+8, 2t+9][g]
//   C, D (16x8, fp32):    c[0] = C[g][2t], c[1] = C[g][2t+1], c[2] = C[g+8][2t], c[3] =
//   C[g+8][2t+1]

// ldmatrix.sync.aligned.m8n8.x4.shared.b16: lanes 8j..8j+7 give the addresses of rows 0..7 of
// 8x8 matrix j (16 bytes each, in shared memory); r[j] of lane l receives row l / 4, elements
// 2 (l % 4) and 2 (l % 4) + 1 of matrix j. With the four 8x8 quarters of a 16x16 A tile in the
// order (rows 0-7, cols 0-7), (rows 8-15, cols 0-7), (rows 0-7, cols 8-15), (rows 8-15, cols
// 8-15), r is exactly mma's A fragment.
__device__ __forceinline__ void LdMatrixX4(uint32_t (&r)[4], const void* shared_row) {
#if defined(__CUDA_ARCH__)
  const unsigned address = static_cast<unsigned>(__cvta_generic_to_shared(shared_row));
  asm volatile("ldmatrix.sync.aligned.m8n8.x4.shared.b16 {%0, %1, %2, %3}, [%4];\n"
               : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
               : "r"(address));
#elif defined(SPQR_CUDA_EMU)
  uint64_t rows[32];
  const int lane =
      ::spqr::emu::WarpExchange("ldmatrix", 0xffffffffu, reinterpret_cast<uintptr_t>(shared_row),
                                rows, std::source_location::current());
  for (int j = 0; j < 4; ++j) {
    const auto* row = reinterpret_cast<const unsigned char*>(rows[8 * j + lane / 4]);
    std::memcpy(&r[j], row + 4 * (lane % 4), 4);
  }
#else
  (void)r, (void)shared_row;
  std::abort();  // a warp instruction: only in kernels (device or CPU harness)
#endif
}

// mma.sync.aligned.m16n8k16.row.col.f32.f16.f16.f32: D = A B + C on fp16 inputs with fp32
// accumulation, fragments as above. The harness's reference sums c and the (exact) products in
// double and rounds once to fp32; tensor cores accumulate with their own
// (unspecified) order and rounding, so compare their results with a tolerance.
__device__ __forceinline__ void MmaM16N8K16F16F32(float (&d)[4], const uint32_t (&a)[4],
                                                  const uint32_t (&b)[2], const float (&c)[4]) {
#if defined(__CUDA_ARCH__)
  asm volatile(
      "mma.sync.aligned.m16n8k16.row.col.f32.f16.f16.f32 {%0, %1, %2, %3}, {%4, %5, %6, %7}, "
      "{%8, %9}, {%10, %11, %12, %13};\n"
      : "=f"(d[0]), "=f"(d[1]), "=f"(d[2]), "=f"(d[3])
      : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b[0]), "r"(b[1]), "f"(c[0]), "f"(c[1]),
        "f"(c[2]), "f"(c[3]));
#elif defined(SPQR_CUDA_EMU)
  // Gather every lane's fragments, then compute this lane's four outputs.
  uint64_t a01[32], a23[32], bb[32], c01[32], c23[32];
  const std::source_location site = std::source_location::current();
  auto pack = [](uint32_t lo, uint32_t hi) { return (uint64_t{hi} << 32) | lo; };
  auto bits = [](float f) {
    uint32_t u;
    std::memcpy(&u, &f, 4);
    return u;
  };
  const int lane = ::spqr::emu::WarpExchange("mma", 0xffffffffu, pack(a[0], a[1]), a01, site);
  ::spqr::emu::WarpExchange("mma", 0xffffffffu, pack(a[2], a[3]), a23, site);
  ::spqr::emu::WarpExchange("mma", 0xffffffffu, pack(b[0], b[1]), bb, site);
  ::spqr::emu::WarpExchange("mma", 0xffffffffu, pack(bits(c[0]), bits(c[1])), c01, site);
  ::spqr::emu::WarpExchange("mma", 0xffffffffu, pack(bits(c[2]), bits(c[3])), c23, site);
  auto half_at = [](uint64_t pair, int reg, int element) {  // reg 0/1 of the pair, element 0/1
    const uint16_t h = static_cast<uint16_t>(pair >> (32 * reg + 16 * element));
    return static_cast<double>(__half2float(__ushort_as_half(h)));
  };
  auto a_at = [&](int row, int col) {  // A[row][col] from the lane that holds it
    const int l = 4 * (row % 8) + (col % 8) / 2;
    const int reg = (row >= 8 ? 1 : 0) + (col >= 8 ? 2 : 0);
    return half_at(reg < 2 ? a01[l] : a23[l], reg % 2, col % 2);
  };
  auto b_at = [&](int k, int n) {  // B[k][n]
    const int l = 4 * n + (k % 8) / 2;
    return half_at(bb[l], k >= 8 ? 1 : 0, k % 2);
  };
  auto c_at = [&](int row, int col) {
    const int l = 4 * (row % 8) + col / 2;
    const uint64_t pair = row < 8 ? c01[l] : c23[l];
    const uint32_t u = static_cast<uint32_t>(pair >> (32 * (col % 2)));
    float f;
    std::memcpy(&f, &u, 4);
    return static_cast<double>(f);
  };
  const int g = lane / 4, t = lane % 4;
  for (int i = 0; i < 4; ++i) {
    const int row = g + (i >= 2 ? 8 : 0);
    const int col = 2 * t + i % 2;
    double sum = c_at(row, col);
    for (int k = 0; k < 16; ++k) sum += a_at(row, k) * b_at(k, col);
    d[i] = static_cast<float>(sum);
  }
#else
  (void)d, (void)a, (void)b, (void)c;
  std::abort();  // a warp instruction: only in kernels (device or CPU harness)
#endif
}

}  // namespace spqr
