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

#include "absl/status/statusor.h"
#include "engine/backend/backend.h"
#include "engine/model/llama_weights.h"

namespace spqr {

struct CpuBackendOptions {
  int num_threads = 0;  // 0 = all cores
};

absl::StatusOr<std::unique_ptr<Backend>> CreateCpuBackend(
    std::shared_ptr<const LlamaWeights> weights, const CpuBackendOptions& options);

}  // namespace spqr
