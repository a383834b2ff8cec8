// The cuBLAS calls our backend makes, for the CPU harness (docs/cuda-harness.md): a handle, its
// stream, and cublasGemmEx as a reference GEMM with the math cuBLAS is asked for: fp16/bf16/fp32
// operands widened exactly to fp32, products summed in fp32 (CUBLAS_COMPUTE_32F), alpha/beta
// applied in fp32, the result rounded to C's type. Only the order of the sum differs from
// cuBLAS's (which is unspecified anyway). Column-major, as cuBLAS is.
#include <cublas_v2.h>
#include <cuda_bf16.h>
#include <cuda_fp16.h>

#include <vector>

namespace {

struct EmuCublas {
  cudaStream_t stream = nullptr;
};

bool ReadableType(cudaDataType t) { return t == CUDA_R_16F || t == CUDA_R_16BF || t == CUDA_R_32F; }

float Load(const void* base, cudaDataType t, int64_t i) {
  switch (t) {
    case CUDA_R_16F:
      return __half2float(static_cast<const __half*>(base)[i]);
    case CUDA_R_16BF:
      return __bfloat162float(static_cast<const __nv_bfloat16*>(base)[i]);
    default:
      return static_cast<const float*>(base)[i];
  }
}

void Store(void* base, cudaDataType t, int64_t i, float v) {
  switch (t) {
    case CUDA_R_16F:
      static_cast<__half*>(base)[i] = __float2half_rn(v);
      break;
    case CUDA_R_16BF:
      static_cast<__nv_bfloat16*>(base)[i] = __float2bfloat16_rn(v);
      break;
    default:
      static_cast<float*>(base)[i] = v;
  }
}

}  // namespace

cublasStatus_t cublasCreate(cublasHandle_t* handle) {
  if (handle == nullptr) return CUBLAS_STATUS_INVALID_VALUE;
  *handle = reinterpret_cast<cublasHandle_t>(new EmuCublas);
  return CUBLAS_STATUS_SUCCESS;
}

cublasStatus_t cublasDestroy(cublasHandle_t handle) {
  if (handle == nullptr) return CUBLAS_STATUS_NOT_INITIALIZED;
  delete reinterpret_cast<EmuCublas*>(handle);
  return CUBLAS_STATUS_SUCCESS;
}

cublasStatus_t cublasSetStream(cublasHandle_t handle, cudaStream_t stream) {
  if (handle == nullptr) return CUBLAS_STATUS_NOT_INITIALIZED;
  reinterpret_cast<EmuCublas*>(handle)->stream = stream;
  return CUBLAS_STATUS_SUCCESS;
}

// C[m, n] = alpha op(A)[m, k] op(B)[k, n] + beta C, column-major; alpha and beta are host floats
// (CUBLAS_POINTER_MODE_HOST, the default).
cublasStatus_t cublasGemmEx(cublasHandle_t handle, cublasOperation_t transa,
                            cublasOperation_t transb, int m, int n, int k, const void* alpha,
                            const void* A, cudaDataType Atype, int lda, const void* B,
                            cudaDataType Btype, int ldb, const void* beta, void* C,
                            cudaDataType Ctype, int ldc, cublasComputeType_t computeType,
                            cublasGemmAlgo_t) {
  if (handle == nullptr) return CUBLAS_STATUS_NOT_INITIALIZED;
  if (computeType != CUBLAS_COMPUTE_32F || !ReadableType(Atype) || !ReadableType(Btype) ||
      !ReadableType(Ctype)) {
    return CUBLAS_STATUS_NOT_SUPPORTED;
  }
  const bool ta = transa != CUBLAS_OP_N;
  const bool tb = transb != CUBLAS_OP_N;
  if (m < 0 || n < 0 || k < 0 || lda < (ta ? k : m) || ldb < (tb ? n : k) || ldc < m || lda < 1 ||
      ldb < 1 || ldc < 1) {
    return CUBLAS_STATUS_INVALID_VALUE;
  }
  const float a = *static_cast<const float*>(alpha);
  const float b = *static_cast<const float*>(beta);
  std::vector<float> row(k);
  for (int i = 0; i < m; ++i) {
    for (int p = 0; p < k; ++p) {
      row[p] = Load(A, Atype,
                    ta ? static_cast<int64_t>(i) * lda + p : static_cast<int64_t>(p) * lda + i);
    }
    for (int j = 0; j < n; ++j) {
      float acc = 0.0f;
      for (int p = 0; p < k; ++p) {
        acc += row[p] *
               Load(B, Btype,
                    tb ? static_cast<int64_t>(p) * ldb + j : static_cast<int64_t>(j) * ldb + p);
      }
      const int64_t c = static_cast<int64_t>(j) * ldc + i;
      // beta == 0 must not read C (it may hold NaN), as cuBLAS documents.
      Store(C, Ctype, c, b == 0.0f ? a * acc : a * acc + b * Load(C, Ctype, c));
    }
  }
  return CUBLAS_STATUS_SUCCESS;
}
