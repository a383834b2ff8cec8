// The CPU backend: fp32 arithmetic over weights kept in their stored 16-bit form, multithreaded
// with OpenMP, KV pool in host memory (fp32, see cpu/paged_kv_pool.h).
//
// Results are deterministic and batch-independent: a sequence's logits are bit-identical whatever
// else is in the step, however its prompt was chunked, and whatever num_threads is.
// Forward and AllocateKvPool must not run concurrently (the engine thread owns the backend).
// OpenMP threads spin between parallel regions; on a machine shared with other busy processes
// set OMP_WAIT_POLICY=passive, or throughput collapses.
#pragma once

#include <memory>
#include <string>

#include "absl/status/statusor.h"
#include "engine/backend/backend.h"
#include "engine/model/llama_weights.h"

namespace spqr {

// How SpQR layers are multiplied (docs/cpu-performance.md):
//   kExact: the format's fused fp32 kernel (spqr_linear.h): every weight decoded exactly, fp32
//           activations; results equal the format's batch-1 product bit for bit.
//   kInt8:  the tile layout and int8 kernel (spqr_tile_kernel.h): activations quantized to int8
//           per 16 columns, integer dot products (AVX-512 VNNI where the CPU has it, else a
//           scalar implementation with the same bits). Layers the tile layout does not take
//           (spqr_tile_layout.h) use kExact.
//   kAuto:  kInt8 when the CPU has AVX-512 VNNI, VBMI and VBMI2 (TileIsaSupported), else kExact.
enum class SpqrCpuKernel { kAuto, kExact, kInt8 };

// How dense BF16 layers are multiplied (docs/cpu-performance.md):
//   kExact: fp32 activations, weights converted to fp32 (linear.h).
//   kBf16:  activations rounded to bf16, AVX512-BF16 dot products (linear_bf16.h); needs a CPU
//           with AVX512-BF16 (CreateCpuBackend refuses otherwise). F16/F32 layers use kExact.
//   kAuto:  kBf16 when the CPU has AVX512-BF16, else kExact (on a quiet machine kBf16 runs prefill
//           2.8x faster, decode the same; it moves held-out perplexity by -0.0007 %, inside
//           issue 11's 0.02 % bound: docs/cpu-performance.md).
enum class DenseCpuKernel { kAuto, kExact, kBf16 };

struct CpuBackendOptions {
  int num_threads = 0;  // 0 = all cores
  SpqrCpuKernel spqr_kernel = SpqrCpuKernel::kAuto;
  DenseCpuKernel dense_kernel = DenseCpuKernel::kAuto;
};

// "auto" | "exact" | "int8" -> kernel; INVALID_ARGUMENT naming the value otherwise.
absl::StatusOr<SpqrCpuKernel> ParseSpqrCpuKernel(const std::string& name);
// "auto" | "exact" | "bf16" -> kernel; INVALID_ARGUMENT naming the value otherwise.
absl::StatusOr<DenseCpuKernel> ParseDenseCpuKernel(const std::string& name);

// What kAuto means on this CPU (the rule CreateCpuBackend applies); other values are returned as
// they are. Never kAuto.
SpqrCpuKernel ResolveSpqrCpuKernel(SpqrCpuKernel kernel);
DenseCpuKernel ResolveDenseCpuKernel(DenseCpuKernel kernel);
// "exact", "int8", "bf16" ("auto" for kAuto).
const char* SpqrCpuKernelName(SpqrCpuKernel kernel);
const char* DenseCpuKernelName(DenseCpuKernel kernel);

absl::StatusOr<std::unique_ptr<Backend>> CreateCpuBackend(
    std::shared_ptr<const LlamaWeights> weights, const CpuBackendOptions& options);

}  // namespace spqr
