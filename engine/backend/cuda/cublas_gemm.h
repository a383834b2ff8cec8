// Dense GEMM through cuBLAS for unquantized weights (and the fp16 baseline the SpQR kernels are
// measured against): Y[m, n] (fp32) = X[m, k] · W[n, k]^T, with X and W both fp16 or both bf16,
// row-major, W in the Hugging Face [out_features, in_features] layout, accumulation in fp32.
// m == 1 is the decode GEMV; cuBLAS picks its own kernel for each shape.
#pragma once

#include <cublas_v2.h>
#include <cuda_runtime.h>

#include <cstdint>

#include "absl/status/statusor.h"
#include "engine/model/tensor.h"

namespace spqr {

// Owns one cuBLAS handle bound to a stream. Move-only. A handle is not thread-safe: use one per
// thread (the engine loop owns one).
class CublasHandle {
 public:
  CublasHandle() = default;
  ~CublasHandle();
  CublasHandle(CublasHandle&& other) noexcept;
  CublasHandle& operator=(CublasHandle&& other) noexcept;
  CublasHandle(const CublasHandle&) = delete;
  CublasHandle& operator=(const CublasHandle&) = delete;

  // Creates a handle on the current device whose work goes to `stream` (nullptr: the legacy
  // default stream). FAILED_PRECONDITION without a usable device.
  static absl::StatusOr<CublasHandle> Create(cudaStream_t stream);

  cublasHandle_t get() const { return handle_; }

 private:
  cublasHandle_t handle_ = nullptr;
};

struct DenseGemmParams {
  const void* x = nullptr;    // [m, k] row-major, of dtype
  const void* w = nullptr;    // [n, k] row-major, of dtype
  float* y = nullptr;         // [m, n] row-major, fp32; overwritten
  DType dtype = DType::kF16;  // of x and w: kF16 or kBF16
  int64_t m = 0;              // rows of x (tokens)
  int64_t n = 0;              // output features
  int64_t k = 0;              // input features
};

// Validates (INVALID_ARGUMENT naming the field; each dimension must fit cuBLAS's int) and enqueues
// the product on the handle's stream. m == 0 is a no-op.
absl::Status DenseGemm(const CublasHandle& handle, const DenseGemmParams& params);

}  // namespace spqr
