// The CPU backend: fp32 arithmetic over weights kept in their stored 16-bit form, multithreaded
// with OpenMP, KV pool in host memory.
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
