// An owning, move-only block of device memory (cudaMalloc) with checked host<->device copies.
// No CUDA types in the header so that tests and the runtime can hold device buffers without the
// CUDA headers. Copies here are synchronous (they complete before returning); the backend's hot
// path uses its own streams.
#pragma once

#include <cstddef>
#include <cstdint>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"

namespace spqr {

class DeviceBuffer {
 public:
  DeviceBuffer() = default;
  ~DeviceBuffer();
  DeviceBuffer(DeviceBuffer&& other) noexcept;
  DeviceBuffer& operator=(DeviceBuffer&& other) noexcept;
  DeviceBuffer(const DeviceBuffer&) = delete;
  DeviceBuffer& operator=(const DeviceBuffer&) = delete;

  // Allocates `bytes` on the current device (0 bytes gives an empty buffer with data() == nullptr).
  // RESOURCE_EXHAUSTED when the device is out of memory, FAILED_PRECONDITION without a device.
  static absl::StatusOr<DeviceBuffer> Allocate(size_t bytes);

  // Allocates and copies `bytes` from host memory.
  static absl::StatusOr<DeviceBuffer> FromHost(const void* host, size_t bytes);
  template <typename T>
  static absl::StatusOr<DeviceBuffer> FromVector(const std::vector<T>& host) {
    return FromHost(host.data(), host.size() * sizeof(T));
  }

  // Copies `bytes` starting at byte `offset` of this buffer; INVALID_ARGUMENT if out of range.
  absl::Status CopyFromHost(const void* host, size_t bytes, size_t offset = 0);
  absl::Status CopyToHost(void* host, size_t bytes, size_t offset = 0) const;
  template <typename T>
  absl::StatusOr<std::vector<T>> ToVector() const {
    std::vector<T> out(size_ / sizeof(T));
    absl::Status status = CopyToHost(out.data(), out.size() * sizeof(T));
    if (!status.ok()) return status;
    return out;
  }

  // Sets every byte to `value` (e.g. 0xff poisons fp32 outputs with NaNs before a kernel writes
  // them, so that an unwritten element cannot pass a comparison).
  absl::Status Fill(uint8_t value);

  void* data() { return data_; }
  const void* data() const { return data_; }
  template <typename T>
  T* as() {
    return static_cast<T*>(data_);
  }
  template <typename T>
  const T* as() const {
    return static_cast<const T*>(data_);
  }
  size_t size() const { return size_; }

 private:
  void Release();
  void* data_ = nullptr;
  size_t size_ = 0;
};

}  // namespace spqr
