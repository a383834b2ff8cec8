// The device side of CUDA C++ for g++: what a kernel header (.cuh) may use, defined on the host so
// that the same kernel text runs under the CPU harness (engine/backend/cuda/emu/harness.h,
// docs/cuda-harness.md). Included only through engine/backend/cuda/launch.cuh, never when nvcc
// compiles.
//
// Provided: threadIdx/blockIdx/blockDim/gridDim/warpSize; __syncthreads (block barrier) and its
// _count/_and/_or forms;
// __syncwarp, __shfl_sync, __shfl_up_sync, __shfl_down_sync, __shfl_xor_sync, __ballot_sync,
// __all_sync, __any_sync (each an exchange among exactly the lanes of its mask, checked as the
// CUDA C++ Programming Guide specifies them); __ldg; the _rn arithmetic intrinsics; rsqrtf and
// the fast math intrinsics (__expf, __sincosf, ... computed with the host libm, so they are more
// accurate than the GPU's); atomics (trivially atomic: threads never run concurrently); bit
// intrinsics (__popc, __clz, __ffs, __brev, __byte_perm). __half, __half2 and __nv_bfloat16 come
// from the toolkit's own cuda_fp16.h / cuda_bf16.h, whose host paths g++ compiles.
//
// Not provided (a compile error, not a silent difference): raw `__shared__` (use
// SPQR_SHARED_ARRAY / SPQR_DYNAMIC_SHARED, which give per-block storage), inline PTX (use the
// wrappers in engine/backend/cuda/ptx.cuh), cooperative groups, textures, dynamic parallelism.
#pragma once

#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <cmath>
#include <cstdint>
#include <cstring>
#include <source_location>
#include <tuple>
#include <type_traits>
#include <utility>

#include "engine/backend/cuda/emu/harness.h"

#if defined(__CUDACC__)
#error "engine/backend/cuda/emu/device.h is for host compilers only"
#endif

// Kernels are ordinary (inline, so a header may define them) host functions.
#undef __global__
#define __global__ inline
#undef __shared__
#define __shared__ \
  static_assert(false, "raw __shared__ is not emulated: use SPQR_SHARED_ARRAY (launch.cuh)");
#ifndef __launch_bounds__
#define __launch_bounds__(...)
#endif

#define threadIdx (::spqr::emu::ThreadIdx())
#define blockIdx (::spqr::emu::BlockIdx())
#define blockDim (::spqr::emu::BlockDim())
#define gridDim (::spqr::emu::GridDim())
inline constexpr int warpSize = 32;

// ---- Synchronization ----

inline void __syncthreads(std::source_location site = std::source_location::current()) {
  ::spqr::emu::SyncThreadsCount(0, site);
}
inline int __syncthreads_count(int predicate,
                               std::source_location site = std::source_location::current()) {
  return ::spqr::emu::SyncThreadsCount(predicate != 0, site);
}
inline int __syncthreads_or(int predicate,
                            std::source_location site = std::source_location::current()) {
  return ::spqr::emu::SyncThreadsCount(predicate != 0, site) > 0;
}
inline int __syncthreads_and(int predicate,
                             std::source_location site = std::source_location::current()) {
  const dim3& d = ::spqr::emu::BlockDim();
  return ::spqr::emu::SyncThreadsCount(predicate != 0, site) == static_cast<int>(d.x * d.y * d.z);
}
inline void __threadfence() {}
inline void __threadfence_block() {}

namespace spqr::emu {

template <typename T>
uint64_t ToBits(const T& v) {
  // Not is_trivially_copyable: __half2 has a user-written copy assignment, yet is plain bits.
  static_assert(sizeof(T) <= 8 && std::is_trivially_destructible_v<T>,
                "warp intrinsics exchange values of at most 8 bytes");
  uint64_t bits = 0;
  std::memcpy(&bits, static_cast<const void*>(&v), sizeof(T));
  return bits;
}

template <typename T>
T FromBits(uint64_t bits) {
  T v{};
  std::memcpy(static_cast<void*>(&v), &bits, sizeof(T));
  return v;
}

inline void CheckWidth(const char* op, int width) {
  if (width < 1 || width > 32 || (width & (width - 1)) != 0) {
    Fail(std::string(op) + ": width " + std::to_string(width) + " is not a power of 2 <= 32");
  }
}

// Reads lane `src`'s published value; src must be in the mask (the Guide: undefined otherwise).
template <typename T>
T ReadLane(const char* op, unsigned mask, const uint64_t* lanes, int src) {
  if (((mask >> src) & 1u) == 0) {
    Fail(std::string(op) + " reads lane " + std::to_string(src) + ", which is not in the mask");
  }
  return FromBits<T>(lanes[src]);
}

}  // namespace spqr::emu

inline void __syncwarp(unsigned mask = 0xffffffffu,
                       std::source_location site = std::source_location::current()) {
  uint64_t lanes[32];
  ::spqr::emu::WarpExchange("__syncwarp", mask, 0, lanes, site);
}

// Lane srcLane (modulo width, within the caller's width-wide segment).
template <typename T>
T __shfl_sync(unsigned mask, T var, int srcLane, int width = 32,
              std::source_location site = std::source_location::current()) {
  ::spqr::emu::CheckWidth("__shfl_sync", width);
  uint64_t lanes[32];
  const int lane =
      ::spqr::emu::WarpExchange("__shfl_sync", mask, ::spqr::emu::ToBits(var), lanes, site);
  const int src = (lane & ~(width - 1)) + (srcLane & (width - 1));
  return ::spqr::emu::ReadLane<T>("__shfl_sync", mask, lanes, src);
}

// Lane - delta, unless that leaves the caller's segment (then the caller's own value).
template <typename T>
T __shfl_up_sync(unsigned mask, T var, unsigned delta, int width = 32,
                 std::source_location site = std::source_location::current()) {
  ::spqr::emu::CheckWidth("__shfl_up_sync", width);
  uint64_t lanes[32];
  const int lane =
      ::spqr::emu::WarpExchange("__shfl_up_sync", mask, ::spqr::emu::ToBits(var), lanes, site);
  const int src =
      (lane & (width - 1)) >= static_cast<int>(delta) ? lane - static_cast<int>(delta) : lane;
  return ::spqr::emu::ReadLane<T>("__shfl_up_sync", mask, lanes, src);
}

// Lane + delta, unless that leaves the caller's segment (then the caller's own value).
template <typename T>
T __shfl_down_sync(unsigned mask, T var, unsigned delta, int width = 32,
                   std::source_location site = std::source_location::current()) {
  ::spqr::emu::CheckWidth("__shfl_down_sync", width);
  uint64_t lanes[32];
  const int lane =
      ::spqr::emu::WarpExchange("__shfl_down_sync", mask, ::spqr::emu::ToBits(var), lanes, site);
  const int src = (lane & (width - 1)) + static_cast<int>(delta) < width
                      ? lane + static_cast<int>(delta)
                      : lane;
  return ::spqr::emu::ReadLane<T>("__shfl_down_sync", mask, lanes, src);
}

// Lane ^ laneMask; a source in a later segment than the caller's gives the caller's own value.
template <typename T>
T __shfl_xor_sync(unsigned mask, T var, int laneMask, int width = 32,
                  std::source_location site = std::source_location::current()) {
  ::spqr::emu::CheckWidth("__shfl_xor_sync", width);
  uint64_t lanes[32];
  const int lane =
      ::spqr::emu::WarpExchange("__shfl_xor_sync", mask, ::spqr::emu::ToBits(var), lanes, site);
  int src = (lane ^ laneMask) & 31;
  if (src >= ((lane / width) + 1) * width) src = lane;
  return ::spqr::emu::ReadLane<T>("__shfl_xor_sync", mask, lanes, src);
}

// Bit l set iff lane l is in the mask and its predicate is non-zero.
inline unsigned __ballot_sync(unsigned mask, int predicate,
                              std::source_location site = std::source_location::current()) {
  uint64_t lanes[32];
  ::spqr::emu::WarpExchange("__ballot_sync", mask, predicate != 0, lanes, site);
  unsigned ballot = 0;
  for (int l = 0; l < 32; ++l) {
    if (((mask >> l) & 1u) != 0 && lanes[l] != 0) ballot |= 1u << l;
  }
  return ballot;
}

inline int __all_sync(unsigned mask, int predicate,
                      std::source_location site = std::source_location::current()) {
  uint64_t lanes[32];
  ::spqr::emu::WarpExchange("__all_sync", mask, predicate != 0, lanes, site);
  for (int l = 0; l < 32; ++l) {
    if (((mask >> l) & 1u) != 0 && lanes[l] == 0) return 0;
  }
  return 1;
}

inline int __any_sync(unsigned mask, int predicate,
                      std::source_location site = std::source_location::current()) {
  uint64_t lanes[32];
  ::spqr::emu::WarpExchange("__any_sync", mask, predicate != 0, lanes, site);
  for (int l = 0; l < 32; ++l) {
    if (((mask >> l) & 1u) != 0 && lanes[l] != 0) return 1;
  }
  return 0;
}

// ---- Memory ----

template <typename T>
T __ldg(const T* p) {
  return *p;
}

// Threads and blocks never run concurrently under the harness, so a plain read-modify-write is
// atomic.
template <typename T>
T atomicAdd(T* address, T value) {
  const T old = *address;
  *address = old + value;
  return old;
}
template <typename T>
T atomicMax(T* address, T value) {
  const T old = *address;
  if (value > old) *address = value;
  return old;
}
template <typename T>
T atomicMin(T* address, T value) {
  const T old = *address;
  if (value < old) *address = value;
  return old;
}
template <typename T>
T atomicExch(T* address, T value) {
  const T old = *address;
  *address = value;
  return old;
}
template <typename T>
T atomicCAS(T* address, T compare, T value) {
  const T old = *address;
  if (old == compare) *address = value;
  return old;
}

// ---- Arithmetic intrinsics (host arithmetic is IEEE round-to-nearest; the project compiles C++
// with -ffp-contract=off (emu/CMakeLists.txt), so a*b+c is never fused behind our back) ----

inline float __fadd_rn(float a, float b) { return a + b; }
inline float __fsub_rn(float a, float b) { return a - b; }
inline float __fmul_rn(float a, float b) { return a * b; }
inline float __fdiv_rn(float a, float b) { return a / b; }
inline float __fmaf_rn(float a, float b, float c) { return std::fma(a, b, c); }
inline float __frcp_rn(float a) { return 1.0f / a; }
inline float __fsqrt_rn(float a) { return std::sqrt(a); }
inline float __saturatef(float a) { return a < 0.0f ? 0.0f : (a > 1.0f ? 1.0f : a); }
inline float rsqrtf(float a) { return 1.0f / std::sqrt(a); }
inline float __expf(float a) { return std::exp(a); }
inline float __logf(float a) { return std::log(a); }
inline float __sinf(float a) { return std::sin(a); }
inline float __cosf(float a) { return std::cos(a); }
inline void __sincosf(float a, float* s, float* c) {
  *s = std::sin(a);
  *c = std::cos(a);
}
inline float __fdividef(float a, float b) { return a / b; }

// Fused multiply-add of 16-bit values, device-only in cuda_fp16.h / cuda_bf16.h: a * b + c formed
// in double (the product of two 16-bit values is exact; the sum is exact unless the exponents are
// more than ~30 apart) and rounded once to the 16-bit type.
inline __half __hfma(__half a, __half b, __half c) {
  return __double2half(std::fma(static_cast<double>(__half2float(a)),
                                static_cast<double>(__half2float(b)),
                                static_cast<double>(__half2float(c))));
}
inline __half2 __hfma2(__half2 a, __half2 b, __half2 c) {
  return __halves2half2(__hfma(__low2half(a), __low2half(b), __low2half(c)),
                        __hfma(__high2half(a), __high2half(b), __high2half(c)));
}
inline __nv_bfloat16 __hfma(__nv_bfloat16 a, __nv_bfloat16 b, __nv_bfloat16 c) {
  return __double2bfloat16(std::fma(static_cast<double>(__bfloat162float(a)),
                                    static_cast<double>(__bfloat162float(b)),
                                    static_cast<double>(__bfloat162float(c))));
}
inline __nv_bfloat162 __hfma2(__nv_bfloat162 a, __nv_bfloat162 b, __nv_bfloat162 c) {
  return __halves2bfloat162(__hfma(__low2bfloat16(a), __low2bfloat16(b), __low2bfloat16(c)),
                            __hfma(__high2bfloat16(a), __high2bfloat16(b), __high2bfloat16(c)));
}

inline unsigned __float_as_uint(float f) {
  return ::spqr::emu::FromBits<unsigned>(::spqr::emu::ToBits(f));
}
inline float __uint_as_float(unsigned u) {
  return ::spqr::emu::FromBits<float>(::spqr::emu::ToBits(u));
}
inline int __float_as_int(float f) { return ::spqr::emu::FromBits<int>(::spqr::emu::ToBits(f)); }
inline float __int_as_float(int i) { return ::spqr::emu::FromBits<float>(::spqr::emu::ToBits(i)); }

inline int __popc(unsigned x) { return __builtin_popcount(x); }
inline int __popcll(unsigned long long x) { return __builtin_popcountll(x); }
inline int __clz(int x) { return x == 0 ? 32 : __builtin_clz(static_cast<unsigned>(x)); }
inline int __ffs(int x) { return __builtin_ffs(x); }
inline unsigned __brev(unsigned x) {
  unsigned r = 0;
  for (int i = 0; i < 32; ++i) r |= ((x >> i) & 1u) << (31 - i);
  return r;
}
// Byte i of the result is byte s[i] of the 8-byte value {y, x} (s = selector nibble i, low 3 bits).
inline unsigned __byte_perm(unsigned x, unsigned y, unsigned s) {
  const uint64_t v = (uint64_t{y} << 32) | x;
  unsigned r = 0;
  for (int i = 0; i < 4; ++i)
    r |= static_cast<unsigned>((v >> (8 * ((s >> (4 * i)) & 7u))) & 0xffu) << (8 * i);
  return r;
}

// ---- Launch ----

namespace spqr::emu {

template <typename Kernel, typename Params>
struct LaunchClosure {
  Kernel kernel;
  const Params* params;
  static void Run(void* self) {
    const LaunchClosure& c = *static_cast<const LaunchClosure*>(self);
    Params copy = *c.params;  // each thread has its own copy of the arguments, as on a GPU
    std::apply(c.kernel, copy);
  }
};

void SetLastLaunchError(cudaError_t error);  // defined with the runtime (runtime.cc)

// kernel<<<grid, block, smem, stream>>>(args...): converts the arguments to the kernel's
// parameter types, as a launch does, and runs the grid before returning. A configuration a GPU
// would refuse runs nothing and is reported by cudaGetLastError(), as on a GPU.
template <typename... KernelParams, typename... Args>
void Launch(const char* name, void (*kernel)(KernelParams...), dim3 grid, dim3 block, size_t smem,
            cudaStream_t stream, Args&&... args) {
  static_assert(sizeof...(KernelParams) == sizeof...(Args), "wrong number of kernel arguments");
  (void)stream;  // every launch is synchronous: stream order is trivially kept
  using Params = std::tuple<std::decay_t<KernelParams>...>;
  const Params params(std::forward<Args>(args)...);
  LaunchClosure<void (*)(KernelParams...), Params> closure{kernel, &params};
  const cudaError_t error =
      RunGrid(name, reinterpret_cast<const void*>(kernel), grid, block, smem,
              &LaunchClosure<void (*)(KernelParams...), Params>::Run, &closure);
  if (error != cudaSuccess) SetLastLaunchError(error);
}

}  // namespace spqr::emu
