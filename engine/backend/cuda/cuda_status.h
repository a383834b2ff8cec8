// Turns CUDA runtime and cuBLAS error codes into absl::Status, naming the failed expression and
// the file:line it was written at, so that a CUDA failure surfaces as an ordinary error at the
// backend's boundary instead of an abort.
//
//   CUDA_RETURN_IF_ERROR(cudaMemcpyAsync(dst, src, n, cudaMemcpyHostToDevice, stream));
//   CUBLAS_RETURN_IF_ERROR(cublasGemmEx(...));
//   CUDA_RETURN_IF_ERROR(cudaGetLastError());  // after every kernel launch
//
// Codes that mean "no usable GPU here" (no driver, driver too old, no device, device busy or
// unavailable) map to FAILED_PRECONDITION; out-of-memory maps to RESOURCE_EXHAUSTED; an invalid
// argument to INVALID_ARGUMENT (a bug in our validation, but reported, not fatal); everything
// else to INTERNAL.
//
// Only code inside engine/backend/cuda may include this header (it pulls in the CUDA headers).
#pragma once

#include <cublas_v2.h>
#include <cuda_runtime.h>

#include "absl/status/status.h"

namespace spqr {

// Returns OK for cudaSuccess, else a status whose message reads
// "<file>:<line>: <expr> failed: <cudaErrorName> (<code>): <description>".
absl::Status CudaErrorToStatus(cudaError_t error, const char* expr, const char* file, int line);

// Same for cuBLAS status codes.
absl::Status CublasStatusToStatus(cublasStatus_t status, const char* expr, const char* file,
                                  int line);

// True for the runtime errors that mean no usable device or driver is present (as opposed to a
// failure of a device that works).
bool IsCudaNoDeviceError(cudaError_t error);

// True for the errors that corrupt the CUDA context for good ("sticky" errors: an illegal address,
// a kernel exception or trap, an ECC error, a launch timeout): every later call of the process
// returns them, so a backend that sees one must stop serving rather than retry.
bool IsCudaStickyError(cudaError_t error);

}  // namespace spqr

// Evaluates a CUDA runtime call; on error returns its Status from the enclosing function.
#define CUDA_RETURN_IF_ERROR(expr)                                                 \
  do {                                                                             \
    const cudaError_t spqr_cuda_err_ = (expr);                                     \
    if (spqr_cuda_err_ != cudaSuccess) {                                           \
      return ::spqr::CudaErrorToStatus(spqr_cuda_err_, #expr, __FILE__, __LINE__); \
    }                                                                              \
  } while (0)

// Evaluates a cuBLAS call; on error returns its Status from the enclosing function.
#define CUBLAS_RETURN_IF_ERROR(expr)                                                   \
  do {                                                                                 \
    const cublasStatus_t spqr_cublas_st_ = (expr);                                     \
    if (spqr_cublas_st_ != CUBLAS_STATUS_SUCCESS) {                                    \
      return ::spqr::CublasStatusToStatus(spqr_cublas_st_, #expr, __FILE__, __LINE__); \
    }                                                                                  \
  } while (0)
