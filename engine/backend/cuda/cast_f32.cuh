// Converts fp32 activations to fp16 or bf16 (round to nearest even, as engine/util/half.h does on
// the host), e.g. before a cuBLAS GEMM whose operands must share the weights' 16-bit type.
#pragma once

#include <cuda_runtime.h>

#include <cstdint>

#include "absl/status/status.h"
#include "engine/model/tensor.h"

namespace spqr {

struct CastF32Params {
  const float* input = nullptr;      // [count]
  void* output = nullptr;            // [count] of output_dtype
  DType output_dtype = DType::kF16;  // kF16 or kBF16
  int64_t count = 0;
};

// Validates (INVALID_ARGUMENT naming the field) and enqueues the conversion on `stream`.
absl::Status LaunchCastF32(const CastF32Params& params, cudaStream_t stream);

}  // namespace spqr
