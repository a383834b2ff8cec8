// Which CUDA devices this process can use. The header has no CUDA types so that code outside the
// CUDA backend (the runtime choosing a backend, the server's startup log, metrics) can include it;
// it is only linked when the project is built with SPQR_WITH_CUDA.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "absl/status/statusor.h"

namespace spqr {

struct CudaDeviceInfo {
  int ordinal = 0;   // the index cudaSetDevice takes
  std::string name;  // e.g. "NVIDIA H100 80GB HBM3"
  int compute_capability_major = 0;
  int compute_capability_minor = 0;
  int64_t total_memory_bytes = 0;
  int64_t free_memory_bytes = 0;  // at the time of the query
  int multiprocessor_count = 0;
  int64_t l2_cache_bytes = 0;
  int driver_version = 0;   // e.g. 13000 for CUDA 13.0 (cudaDriverGetVersion)
  int runtime_version = 0;  // the CUDA runtime this binary links (cudaRuntimeGetVersion)
  // Whether this binary's kernels can run on the device: false when it carries no machine code or
  // PTX the device accepts (e.g. an sm_90 build on an sm_80 card); `unsupported_reason` says why.
  bool can_run_kernels = false;
  std::string unsupported_reason;

  // "sm_90": the architecture the device runs.
  std::string ArchName() const;
};

// Lists the devices visible to this process (CUDA_VISIBLE_DEVICES applies).
//   OK, non-empty     devices found; each entry says what it is.
//   OK, empty         the driver is present but exposes no device (e.g. CUDA_VISIBLE_DEVICES="").
//   FAILED_PRECONDITION  no usable CUDA driver (libcuda.so.1 absent, or older than the runtime this
//                     binary was built with, or the devices are unavailable); the message says
//                     which, from the runtime's own error.
//   INTERNAL          any other CUDA failure while querying.
// Never aborts and never requires a GPU: this is the call that decides whether the CUDA backend can
// be used. Querying free memory creates each device's primary context (a one-time cost of a few
// hundred milliseconds and some device memory, which the CUDA backend would create anyway).
absl::StatusOr<std::vector<CudaDeviceInfo>> QueryCudaDevices();

// The architectures this binary was compiled for, e.g. {90} for an sm_90 build (from nvcc's
// __CUDA_ARCH_LIST__).
std::vector<int> CompiledCudaArchitectures();

// One line per device for logs: "cuda:0 NVIDIA H100 80GB HBM3 sm_90, 132 SMs, 79.1/79.6 GiB free".
std::string DescribeCudaDevices(const std::vector<CudaDeviceInfo>& devices);

}  // namespace spqr
