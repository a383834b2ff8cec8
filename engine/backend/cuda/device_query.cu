#include <cuda_runtime.h>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/strings/str_join.h"
#include "engine/backend/cuda/cuda_status.h"
#include "engine/backend/cuda/device_query.h"

namespace spqr {
namespace {

// Never launched: asking for its attributes tells whether the binary holds an image the device
// can load, without running anything.
__global__ void ProbeKernel(int* out) {
  if (out != nullptr) *out = 1;
}

// Fills info->can_run_kernels; the current device must be info->ordinal.
void CheckKernelImage(CudaDeviceInfo* info) {
  cudaFuncAttributes attributes{};
  // The C entry point (not the template overload), so the CPU harness's g++ build compiles it too.
  const cudaError_t error =
      cudaFuncGetAttributes(&attributes, reinterpret_cast<const void*>(ProbeKernel));
  if (error == cudaSuccess) {
    info->can_run_kernels = true;
    return;
  }
  (void)cudaGetLastError();  // the error is not sticky; clear it so later calls start clean
  std::vector<std::string> archs;
  for (int arch : CompiledCudaArchitectures()) archs.push_back(absl::StrCat("sm_", arch / 10));
  info->unsupported_reason =
      absl::StrFormat("this binary carries device code for %s but the device is %s: %s",
                      absl::StrJoin(archs, ","), info->ArchName(), cudaGetErrorString(error));
}

}  // namespace

std::string CudaDeviceInfo::ArchName() const {
  return absl::StrCat("sm_", compute_capability_major, compute_capability_minor);
}

std::vector<int> CompiledCudaArchitectures() {
#ifdef __CUDA_ARCH_LIST__
  return {__CUDA_ARCH_LIST__};
#else
  return {};
#endif
}

absl::StatusOr<std::vector<CudaDeviceInfo>> QueryCudaDevices() {
  int runtime_version = 0;
  CUDA_RETURN_IF_ERROR(cudaRuntimeGetVersion(&runtime_version));
  // cudaDriverGetVersion reports 0 (and succeeds) when libcuda.so.1 cannot be loaded.
  int driver_version = 0;
  CUDA_RETURN_IF_ERROR(cudaDriverGetVersion(&driver_version));
  if (driver_version == 0) {
    return absl::FailedPreconditionError(
        "no CUDA driver: libcuda.so.1 could not be loaded (no NVIDIA driver on this machine)");
  }
  int count = 0;
  const cudaError_t count_error = cudaGetDeviceCount(&count);
  if (count_error == cudaErrorNoDevice) {
    (void)cudaGetLastError();
    return std::vector<CudaDeviceInfo>{};
  }
  if (count_error != cudaSuccess) {
    (void)cudaGetLastError();
    return CudaErrorToStatus(count_error, "cudaGetDeviceCount(&count)", __FILE__, __LINE__);
  }

  int previous_device = 0;
  CUDA_RETURN_IF_ERROR(cudaGetDevice(&previous_device));
  std::vector<CudaDeviceInfo> devices;
  devices.reserve(count);
  for (int ordinal = 0; ordinal < count; ++ordinal) {
    cudaDeviceProp prop{};
    CUDA_RETURN_IF_ERROR(cudaGetDeviceProperties(&prop, ordinal));
    CudaDeviceInfo info;
    info.ordinal = ordinal;
    info.name = prop.name;
    info.compute_capability_major = prop.major;
    info.compute_capability_minor = prop.minor;
    info.total_memory_bytes = static_cast<int64_t>(prop.totalGlobalMem);
    info.multiprocessor_count = prop.multiProcessorCount;
    info.l2_cache_bytes = prop.l2CacheSize;
    info.driver_version = driver_version;
    info.runtime_version = runtime_version;
    CUDA_RETURN_IF_ERROR(cudaSetDevice(ordinal));
    size_t free_bytes = 0;
    size_t total_bytes = 0;
    CUDA_RETURN_IF_ERROR(cudaMemGetInfo(&free_bytes, &total_bytes));
    info.free_memory_bytes = static_cast<int64_t>(free_bytes);
    CheckKernelImage(&info);
    devices.push_back(std::move(info));
  }
  CUDA_RETURN_IF_ERROR(cudaSetDevice(previous_device));
  return devices;
}

std::string DescribeCudaDevices(const std::vector<CudaDeviceInfo>& devices) {
  if (devices.empty()) return "no CUDA devices";
  constexpr double kGiB = 1024.0 * 1024.0 * 1024.0;
  std::vector<std::string> lines;
  for (const CudaDeviceInfo& d : devices) {
    std::string line = absl::StrFormat(
        "cuda:%d %s %s, %d SMs, %.1f/%.1f GiB free, driver %d, runtime %d", d.ordinal, d.name,
        d.ArchName(), d.multiprocessor_count, d.free_memory_bytes / kGiB,
        d.total_memory_bytes / kGiB, d.driver_version, d.runtime_version);
    if (!d.can_run_kernels) absl::StrAppend(&line, " (unusable: ", d.unsupported_reason, ")");
    lines.push_back(std::move(line));
  }
  return absl::StrJoin(lines, "\n");
}

}  // namespace spqr
