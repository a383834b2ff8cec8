#include "engine/backend/cuda/cublas_gemm.h"

#include <limits>
#include <utility>

#include "absl/strings/str_cat.h"
#include "engine/backend/cuda/cublas_api.h"
#include "engine/backend/cuda/cuda_status.h"
#include "engine/backend/cuda/kernel_launch_checks.h"
#include "engine/util/status_macros.h"

namespace spqr {

namespace {

// The loaded table; only called once a handle exists, i.e. after LoadCublasApi succeeded.
const CublasApi& Api() { return **LoadCublasApi(); }

}  // namespace

CublasHandle::~CublasHandle() {
  if (handle_ != nullptr) (void)Api().destroy(handle_);
}

CublasHandle::CublasHandle(CublasHandle&& other) noexcept
    : handle_(std::exchange(other.handle_, nullptr)) {}

CublasHandle& CublasHandle::operator=(CublasHandle&& other) noexcept {
  if (this != &other) {
    if (handle_ != nullptr) (void)Api().destroy(handle_);
    handle_ = std::exchange(other.handle_, nullptr);
  }
  return *this;
}

absl::StatusOr<CublasHandle> CublasHandle::Create(cudaStream_t stream) {
  ASSIGN_OR_RETURN(const CublasApi* api, LoadCublasApi());
  CublasHandle handle;
  CUBLAS_RETURN_IF_ERROR(api->create(&handle.handle_));
  CUBLAS_RETURN_IF_ERROR(api->set_stream(handle.handle_, stream));
  return handle;
}

absl::Status DenseGemm(const CublasHandle& handle, const DenseGemmParams& p) {
  constexpr char kOp[] = "DenseGemm";
  constexpr int64_t kMaxDim = std::numeric_limits<int>::max();
  RETURN_IF_ERROR(CheckInRange(p.m, 0, kMaxDim, kOp, "m"));
  RETURN_IF_ERROR(CheckInRange(p.n, 1, kMaxDim, kOp, "n"));
  RETURN_IF_ERROR(CheckInRange(p.k, 1, kMaxDim, kOp, "k"));
  if (p.m == 0) return absl::OkStatus();
  RETURN_IF_ERROR(CheckNotNull(handle.get(), kOp, "handle"));
  RETURN_IF_ERROR(CheckNotNull(p.x, kOp, "x"));
  RETURN_IF_ERROR(CheckNotNull(p.w, kOp, "w"));
  RETURN_IF_ERROR(CheckNotNull(p.y, kOp, "y"));
  cudaDataType_t type;
  switch (p.dtype) {
    case DType::kF16:
      type = CUDA_R_16F;
      break;
    case DType::kBF16:
      type = CUDA_R_16BF;
      break;
    default:
      return absl::InvalidArgumentError(absl::StrCat("DenseGemm: dtype must be F16 or BF16, not ",
                                                     std::string(DTypeName(p.dtype))));
  }
  // cuBLAS is column-major. Row-major Y[m, n] is column-major Y^T[n, m] = W · X^T, where row-major
  // W[n, k] read column-major is W^T[k, n] (so op T), and row-major X[m, k] is X^T[k, m] (op N).
  const float alpha = 1.0f;
  const float beta = 0.0f;
  const int m = static_cast<int>(p.m);
  const int n = static_cast<int>(p.n);
  const int k = static_cast<int>(p.k);
  CUBLAS_RETURN_IF_ERROR(Api().gemm_ex(handle.get(), CUBLAS_OP_T, CUBLAS_OP_N, n, m, k, &alpha, p.w,
                                       type, k, p.x, type, k, &beta, p.y, CUDA_R_32F, n,
                                       CUBLAS_COMPUTE_32F, CUBLAS_GEMM_DEFAULT));
  return absl::OkStatus();
}

}  // namespace spqr
