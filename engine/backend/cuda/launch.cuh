// How a kernel is written so that it compiles twice (docs/cuda-harness.md): its body lives in a
// header (<op>_kernel.cuh) that includes this file, and every launch goes through SPQR_LAUNCH.
//   nvcc: the real thing (__shared__, kernel<<<grid, block, smem, stream>>>(args...)).
//   g++:  the CPU harness (engine/backend/cuda/emu/): the launch runs the grid synchronously on
//         the host, block by block, threads as fibers, in the order the harness is set to.
//
// Rules for kernel headers:
// - Shared memory only through SPQR_SHARED_ARRAY / SPQR_DYNAMIC_SHARED (a raw __shared__ fails
//   to compile under the harness, which could not give it per-block storage).
// - Inline PTX only through the wrappers in ptx.cuh (each has a host reference).
// - A non-template __global__ function in a header must be included by a single .cu of the
//   device build (its launcher), or the two host stubs collide at link time; under g++ kernels
//   are inline functions.
// - A kernel that is a template specialization is passed as a pointer variable, since the macro
//   would split its template arguments: `auto* k = &MyKernel<4, float>; SPQR_LAUNCH(k, ...)`.
//
// SPQR_LAUNCH(kernel, grid, block, smem_bytes, stream, args...) does not check for errors; call
// CUDA_RETURN_IF_ERROR(cudaGetLastError()) after it as after any launch.
#pragma once

#include <cuda_runtime.h>

#if defined(__CUDACC__)

#define SPQR_LAUNCH(kernel, grid, block, smem, stream, ...) \
  kernel<<<(grid), (block), (smem), (stream)>>>(__VA_ARGS__)
// A block-wide array: `SPQR_SHARED_ARRAY(float, partial, 8);` then partial[i].
#define SPQR_SHARED_ARRAY(type, name, count) __shared__ type name[count]
// The launch's dynamic shared memory as a `type*` named `name`.
#define SPQR_DYNAMIC_SHARED(type, name)                                 \
  extern __shared__ __align__(16) unsigned char spqr_dynamic_shared_[]; \
  type* name = reinterpret_cast<type*>(spqr_dynamic_shared_)

#else  // g++: the CPU harness

#include "engine/backend/cuda/emu/device.h"

#define SPQR_LAUNCH(kernel, grid, block, smem, stream, ...) \
  ::spqr::emu::Launch(#kernel, kernel, (grid), (block), (smem), (stream)__VA_OPT__(, ) __VA_ARGS__)
// The tag's address (a static object per declaration and template instance) names the variable;
// every thread of a block gets the same block-local storage.
#define SPQR_SHARED_ARRAY(type, name, count)         \
  static constexpr char spqr_shared_tag_##name = 0;  \
  type(&name)[count] = *static_cast<type(*)[count]>( \
      ::spqr::emu::StaticShared(&spqr_shared_tag_##name, sizeof(type[count]), #name))
#define SPQR_DYNAMIC_SHARED(type, name) \
  type* name = reinterpret_cast<type*>(::spqr::emu::DynamicShared())

#endif
