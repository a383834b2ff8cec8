// Wrappers for PTX instructions that CUDA C++ does not expose, each with a host reference
// implementation written from the PTX ISA's definition. nvcc compiling for the device emits the
// instruction; everything else (the CPU harness, host code) runs the reference, which the harness
// tests check against the ISA's examples. Add an instruction here, with its reference and a
// test, before using it in a kernel.
#pragma once

#include <cuda_runtime.h>

#include <cstdint>
#include <cstring>

#if !defined(__CUDACC__) && defined(SPQR_CUDA_EMU)
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

}  // namespace spqr
