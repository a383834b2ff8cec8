// The subset of the CUDA runtime API our backend calls, implemented on host memory for the CPU
// harness (docs/cuda-harness.md). Harness binaries link this instead of libcudart, so the
// backend's code (DeviceBuffer, CudaErrorToStatus, the launch functions, the device query) is the
// same text in both builds.
//
// "Device" memory is host memory (operator new, so ASan sees every allocation's exact bounds),
// tracked so that copies check their direction (a host pointer where device memory is expected is
// cudaErrorInvalidValue, as a GPU would fail it) and so that a memory budget can run out:
// SPQR_CUDA_EMU_MEMORY_MB (default 4096) is the emulated device's total memory. Every call is
// synchronous; streams and events are tokens; event times are host wall time and say nothing
// about a GPU. One emulated device: "CUDA CPU harness (emulated)", compute capability 9.0.
#include <cuda_runtime_api.h>

#include <atomic>
#include <chrono>
#include <cstdlib>
#include <cstring>
#include <iterator>
#include <map>
#include <mutex>
#include <new>

#include "engine/backend/cuda/emu/harness.h"

namespace spqr::emu {
namespace {

constexpr size_t kAlignment = 256;  // cudaMalloc's guarantee

size_t MemoryBudget() {
  static const size_t budget = [] {
    const char* env = std::getenv("SPQR_CUDA_EMU_MEMORY_MB");
    const size_t mb = env != nullptr ? std::strtoull(env, nullptr, 10) : 4096;
    return mb * 1024 * 1024;
  }();
  return budget;
}

struct Allocations {
  std::mutex mutex;
  std::map<const char*, size_t> sizes;  // base -> bytes
  size_t used = 0;
};

Allocations& Device() {
  static Allocations* allocations = new Allocations;  // never destroyed: freed at any time
  return *allocations;
}

// True when [p, p + bytes) lies inside one device allocation.
bool IsDeviceRange(const void* p, size_t bytes) {
  Allocations& d = Device();
  std::lock_guard<std::mutex> lock(d.mutex);
  const char* c = static_cast<const char*>(p);
  auto it = d.sizes.upper_bound(c);
  if (it == d.sizes.begin()) return false;
  --it;
  return c >= it->first && c + bytes <= it->first + it->second;
}

thread_local cudaError_t t_last_error = cudaSuccess;
std::atomic<cudaError_t> g_sticky_error{cudaSuccess};

// The sticky error if one is set, else `otherwise`.
cudaError_t Sticky(cudaError_t otherwise = cudaSuccess) {
  const cudaError_t e = g_sticky_error.load();
  return e != cudaSuccess ? e : otherwise;
}

cudaError_t Record(cudaError_t error) {
  if (error != cudaSuccess) t_last_error = error;
  return error;
}

struct EmuStream {
  int token = 0;
};
struct EmuEvent {
  std::chrono::steady_clock::time_point time;
  bool recorded = false;
};

// Checks a copy's pointers against its direction.
cudaError_t CheckCopy(void* dst, const void* src, size_t count, cudaMemcpyKind kind) {
  if (count == 0) return cudaSuccess;
  if (dst == nullptr || src == nullptr) return cudaErrorInvalidValue;
  const bool dst_device = IsDeviceRange(dst, count);
  const bool src_device = IsDeviceRange(src, count);
  switch (kind) {
    case cudaMemcpyHostToHost:
      return cudaSuccess;
    case cudaMemcpyHostToDevice:
      return dst_device ? cudaSuccess : cudaErrorInvalidValue;
    case cudaMemcpyDeviceToHost:
      return src_device ? cudaSuccess : cudaErrorInvalidValue;
    case cudaMemcpyDeviceToDevice:
      return dst_device && src_device ? cudaSuccess : cudaErrorInvalidValue;
    case cudaMemcpyDefault:
      return cudaSuccess;
  }
  return cudaErrorInvalidMemcpyDirection;
}

}  // namespace

void SetLastLaunchError(cudaError_t error) { Record(error); }
void SetStickyError(cudaError_t error) { g_sticky_error.store(error); }

}  // namespace spqr::emu

using spqr::emu::Record;

// ---- Errors ----

cudaError_t cudaGetLastError() {
  if (spqr::emu::Sticky() != cudaSuccess) return spqr::emu::Sticky();
  const cudaError_t e = spqr::emu::t_last_error;
  spqr::emu::t_last_error = cudaSuccess;
  return e;
}

cudaError_t cudaPeekAtLastError() { return spqr::emu::Sticky(spqr::emu::t_last_error); }

#define SPQR_EMU_ERRORS(X)                                                                       \
  X(cudaSuccess, "no error")                                                                     \
  X(cudaErrorInvalidValue, "invalid argument")                                                   \
  X(cudaErrorMemoryAllocation, "out of memory")                                                  \
  X(cudaErrorInitializationError, "initialization error")                                        \
  X(cudaErrorInvalidConfiguration, "invalid configuration argument")                             \
  X(cudaErrorInvalidDevicePointer, "invalid device pointer")                                     \
  X(cudaErrorInvalidMemcpyDirection, "invalid copy direction for memcpy")                        \
  X(cudaErrorInsufficientDriver, "CUDA driver version is insufficient for CUDA runtime version") \
  X(cudaErrorNoDevice, "no CUDA-capable device is detected")                                     \
  X(cudaErrorInvalidDevice, "invalid device ordinal")                                            \
  X(cudaErrorInvalidDeviceFunction, "invalid device function")                                   \
  X(cudaErrorInvalidKernelImage, "device kernel image is invalid")                               \
  X(cudaErrorNoKernelImageForDevice, "no kernel image is available for execution on the device") \
  X(cudaErrorInvalidResourceHandle, "invalid resource handle")                                   \
  X(cudaErrorNotReady, "device not ready")                                                       \
  X(cudaErrorIllegalAddress, "an illegal memory access was encountered")                         \
  X(cudaErrorLaunchFailure, "unspecified launch failure")                                        \
  X(cudaErrorDevicesUnavailable, "CUDA-capable device(s) is/are busy or unavailable")            \
  X(cudaErrorSystemDriverMismatch,                                                               \
    "system has unsupported display driver / cuda driver combination")                           \
  X(cudaErrorCompatNotSupportedOnDevice,                                                         \
    "forward compatibility was attempted on non supported HW")                                   \
  X(cudaErrorStubLibrary, "CUDA driver is a stub library")                                       \
  X(cudaErrorNotSupported, "operation not supported")

const char* cudaGetErrorName(cudaError_t error) {
#define SPQR_EMU_NAME(code, text) \
  case code:                      \
    return #code;
  switch (error) { SPQR_EMU_ERRORS(SPQR_EMU_NAME) default : return "cudaErrorUnknown"; }
#undef SPQR_EMU_NAME
}

const char* cudaGetErrorString(cudaError_t error) {
#define SPQR_EMU_TEXT(code, text) \
  case code:                      \
    return text;
  switch (error) { SPQR_EMU_ERRORS(SPQR_EMU_TEXT) default : return "unknown error"; }
#undef SPQR_EMU_TEXT
}

// ---- Memory ----

cudaError_t cudaMalloc(void** ptr, size_t size) {
  if (ptr == nullptr) return Record(cudaErrorInvalidValue);
  *ptr = nullptr;
  if (size == 0) return cudaSuccess;
  spqr::emu::Allocations& d = spqr::emu::Device();
  {
    std::lock_guard<std::mutex> lock(d.mutex);
    if (size > spqr::emu::MemoryBudget() - d.used) return Record(cudaErrorMemoryAllocation);
    d.used += size;
  }
  char* p = static_cast<char*>(
      ::operator new(size, std::align_val_t(spqr::emu::kAlignment), std::nothrow));
  std::lock_guard<std::mutex> lock(d.mutex);
  if (p == nullptr) {
    d.used -= size;
    return Record(cudaErrorMemoryAllocation);
  }
  std::memset(p, 0xa5, size);  // like fresh device memory, not zero
  d.sizes[p] = size;
  *ptr = p;
  return cudaSuccess;
}

cudaError_t cudaFree(void* ptr) {
  if (ptr == nullptr) return cudaSuccess;
  spqr::emu::Allocations& d = spqr::emu::Device();
  std::lock_guard<std::mutex> lock(d.mutex);
  auto it = d.sizes.find(static_cast<const char*>(ptr));
  if (it == d.sizes.end()) return Record(cudaErrorInvalidValue);
  d.used -= it->second;
  d.sizes.erase(it);
  ::operator delete(ptr, std::align_val_t(spqr::emu::kAlignment));
  return cudaSuccess;
}

cudaError_t cudaMallocHost(void** ptr, size_t size) {
  if (ptr == nullptr) return Record(cudaErrorInvalidValue);
  *ptr = ::operator new(size, std::align_val_t(spqr::emu::kAlignment), std::nothrow);
  return *ptr == nullptr && size > 0 ? Record(cudaErrorMemoryAllocation) : cudaSuccess;
}

cudaError_t cudaFreeHost(void* ptr) {
  if (ptr != nullptr) ::operator delete(ptr, std::align_val_t(spqr::emu::kAlignment));
  return cudaSuccess;
}

cudaError_t cudaMemcpy(void* dst, const void* src, size_t count, cudaMemcpyKind kind) {
  if (spqr::emu::Sticky() != cudaSuccess) return Record(spqr::emu::Sticky());
  const cudaError_t e = spqr::emu::CheckCopy(dst, src, count, kind);
  if (e != cudaSuccess) return Record(e);
  if (count > 0) std::memmove(dst, src, count);
  return cudaSuccess;
}

cudaError_t cudaMemcpyAsync(void* dst, const void* src, size_t count, cudaMemcpyKind kind,
                            cudaStream_t) {
  return cudaMemcpy(dst, src, count, kind);
}

cudaError_t cudaMemset(void* dst, int value, size_t count) {
  if (count == 0) return cudaSuccess;
  if (!spqr::emu::IsDeviceRange(dst, count)) return Record(cudaErrorInvalidValue);
  std::memset(dst, value, count);
  return cudaSuccess;
}

cudaError_t cudaMemsetAsync(void* dst, int value, size_t count, cudaStream_t) {
  return cudaMemset(dst, value, count);
}

cudaError_t cudaMemGetInfo(size_t* free_bytes, size_t* total_bytes) {
  spqr::emu::Allocations& d = spqr::emu::Device();
  std::lock_guard<std::mutex> lock(d.mutex);
  if (free_bytes != nullptr) *free_bytes = spqr::emu::MemoryBudget() - d.used;
  if (total_bytes != nullptr) *total_bytes = spqr::emu::MemoryBudget();
  return cudaSuccess;
}

// ---- Streams and events (every operation has completed when its call returns) ----

cudaError_t cudaStreamCreate(cudaStream_t* stream) {
  if (stream == nullptr) return Record(cudaErrorInvalidValue);
  *stream = reinterpret_cast<cudaStream_t>(new spqr::emu::EmuStream);
  return cudaSuccess;
}

cudaError_t cudaStreamCreateWithFlags(cudaStream_t* stream, unsigned int) {
  return cudaStreamCreate(stream);
}

cudaError_t cudaStreamDestroy(cudaStream_t stream) {
  delete reinterpret_cast<spqr::emu::EmuStream*>(stream);
  return cudaSuccess;
}

cudaError_t cudaStreamSynchronize(cudaStream_t) { return spqr::emu::Sticky(); }
cudaError_t cudaStreamQuery(cudaStream_t) { return cudaSuccess; }
cudaError_t cudaStreamWaitEvent(cudaStream_t, cudaEvent_t, unsigned int) { return cudaSuccess; }

cudaError_t cudaEventCreate(cudaEvent_t* event) {
  if (event == nullptr) return Record(cudaErrorInvalidValue);
  *event = reinterpret_cast<cudaEvent_t>(new spqr::emu::EmuEvent);
  return cudaSuccess;
}

cudaError_t cudaEventCreateWithFlags(cudaEvent_t* event, unsigned int) {
  return cudaEventCreate(event);
}

cudaError_t cudaEventDestroy(cudaEvent_t event) {
  delete reinterpret_cast<spqr::emu::EmuEvent*>(event);
  return cudaSuccess;
}

cudaError_t cudaEventRecord(cudaEvent_t event, cudaStream_t) {
  if (event == nullptr) return Record(cudaErrorInvalidResourceHandle);
  auto* e = reinterpret_cast<spqr::emu::EmuEvent*>(event);
  e->time = std::chrono::steady_clock::now();
  e->recorded = true;
  return cudaSuccess;
}

cudaError_t cudaEventSynchronize(cudaEvent_t) { return spqr::emu::Sticky(); }
cudaError_t cudaEventQuery(cudaEvent_t) { return cudaSuccess; }

cudaError_t cudaEventElapsedTime(float* ms, cudaEvent_t start, cudaEvent_t end) {
  auto* a = reinterpret_cast<spqr::emu::EmuEvent*>(start);
  auto* b = reinterpret_cast<spqr::emu::EmuEvent*>(end);
  if (ms == nullptr || a == nullptr || b == nullptr) return Record(cudaErrorInvalidValue);
  if (!a->recorded || !b->recorded) return Record(cudaErrorInvalidResourceHandle);
  *ms = std::chrono::duration<float, std::milli>(b->time - a->time).count();
  return cudaSuccess;
}

cudaError_t cudaDeviceSynchronize() { return spqr::emu::Sticky(); }

// ---- Devices ----

cudaError_t cudaRuntimeGetVersion(int* version) {
  if (version == nullptr) return Record(cudaErrorInvalidValue);
  *version = CUDART_VERSION;
  return cudaSuccess;
}

cudaError_t cudaDriverGetVersion(int* version) {
  if (version == nullptr) return Record(cudaErrorInvalidValue);
  *version = CUDART_VERSION;  // the emulated driver matches the headers it was built with
  return cudaSuccess;
}

cudaError_t cudaGetDeviceCount(int* count) {
  if (count == nullptr) return Record(cudaErrorInvalidValue);
  *count = 1;
  return cudaSuccess;
}

cudaError_t cudaGetDevice(int* device) {
  if (device == nullptr) return Record(cudaErrorInvalidValue);
  *device = 0;
  return cudaSuccess;
}

cudaError_t cudaSetDevice(int device) {
  return device == 0 ? cudaSuccess : Record(cudaErrorInvalidDevice);
}

cudaError_t cudaGetDeviceProperties(cudaDeviceProp* prop, int device) {
  if (prop == nullptr) return Record(cudaErrorInvalidValue);
  if (device != 0) return Record(cudaErrorInvalidDevice);
  *prop = cudaDeviceProp{};
  std::strncpy(prop->name, "CUDA CPU harness (emulated)", sizeof(prop->name) - 1);
  prop->major = 9;
  prop->minor = 0;
  prop->totalGlobalMem = spqr::emu::MemoryBudget();
  prop->multiProcessorCount = 1;
  prop->warpSize = 32;
  prop->maxThreadsPerBlock = 1024;
  prop->maxThreadsDim[0] = 1024;
  prop->maxThreadsDim[1] = 1024;
  prop->maxThreadsDim[2] = 64;
  prop->maxGridSize[0] = 0x7fffffff;
  prop->maxGridSize[1] = 65535;
  prop->maxGridSize[2] = 65535;
  prop->sharedMemPerBlock = 48 * 1024;
  prop->sharedMemPerBlockOptin = 227 * 1024;
  prop->l2CacheSize = 0;
  return cudaSuccess;
}

cudaError_t cudaFuncGetAttributes(cudaFuncAttributes* attr, const void* func) {
  if (attr == nullptr || func == nullptr) return Record(cudaErrorInvalidDeviceFunction);
  *attr = cudaFuncAttributes{};
  attr->maxThreadsPerBlock = 1024;
  attr->maxDynamicSharedSizeBytes = 48 * 1024;
  return cudaSuccess;
}

cudaError_t cudaFuncSetAttribute(const void* func, cudaFuncAttribute attr, int value) {
  if (attr != cudaFuncAttributeMaxDynamicSharedMemorySize) return cudaSuccess;
  return Record(spqr::emu::SetMaxDynamicSharedBytes(func, value));
}
