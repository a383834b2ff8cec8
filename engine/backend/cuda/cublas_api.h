// The cuBLAS entry points the backend calls, resolved at run time with dlopen instead of linked.
//
// Why: libcublas pulls in libcublasLt, which carries ~94 KB of thread-local storage. A library
// linked at start-up gets its TLS in the static TLS block, which glibc carves out of *every*
// thread's stack; the metrics exposer (prometheus-cpp's civetweb) starts its worker threads with a
// small fixed stack, and with that much static TLS they fail to start ("null context when
// constructing CivetServer"). Loaded with dlopen, cuBLAS's TLS is dynamic: allocated only in the
// threads that touch it (the engine loop). It also means a binary with the CUDA backend compiled in
// starts on a machine without cuBLAS installed; only `--backend cuda` then fails, naming the
// library.
//
// Under the CPU harness (SPQR_CUDA_EMU) the table points at the harness's own cuBLAS functions.
// Only code inside engine/backend/cuda may include this header.
#pragma once

#include <cublas_v2.h>

#include "absl/status/statusor.h"

namespace spqr {

// cublasGemmEx with cublasComputeType_t (the C entry point; C++ also sees an inline overload taking
// cudaDataType, so decltype(&cublasGemmEx) would be ambiguous).
using CublasGemmExFn = cublasStatus_t (*)(cublasHandle_t, cublasOperation_t, cublasOperation_t, int,
                                          int, int, const void*, const void*, cudaDataType, int,
                                          const void*, cudaDataType, int, const void*, void*,
                                          cudaDataType, int, cublasComputeType_t, cublasGemmAlgo_t);

struct CublasApi {
  decltype(&cublasCreate_v2) create = nullptr;
  decltype(&cublasDestroy_v2) destroy = nullptr;
  decltype(&cublasSetStream_v2) set_stream = nullptr;
  CublasGemmExFn gemm_ex = nullptr;
};

// Loads libcublas.so.<CUBLAS_VER_MAJOR> once per process (thread-safe) and returns its entry
// points; later calls return the same table or the same error. The library is searched the usual
// way (LD_LIBRARY_PATH, the binary's RUNPATH, ld.so.cache) and then next to the libcudart this
// binary uses. FAILED_PRECONDITION naming the library and dlerror() when it cannot be loaded or
// lacks a symbol.
absl::StatusOr<const CublasApi*> LoadCublasApi();

}  // namespace spqr
