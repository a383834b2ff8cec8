#include "engine/backend/cuda/device_buffer.h"

#include <cuda_runtime.h>

#include <utility>

#include "absl/strings/str_format.h"
#include "engine/backend/cuda/cuda_status.h"

namespace spqr {
namespace {

absl::Status CheckRange(size_t offset, size_t bytes, size_t size, const char* what) {
  if (offset > size || bytes > size - offset) {
    return absl::InvalidArgumentError(
        absl::StrFormat("DeviceBuffer::%s: %d bytes at offset %d exceed the buffer's %d bytes",
                        what, bytes, offset, size));
  }
  return absl::OkStatus();
}

}  // namespace

DeviceBuffer::~DeviceBuffer() { Release(); }

DeviceBuffer::DeviceBuffer(DeviceBuffer&& other) noexcept
    : data_(std::exchange(other.data_, nullptr)), size_(std::exchange(other.size_, 0)) {}

DeviceBuffer& DeviceBuffer::operator=(DeviceBuffer&& other) noexcept {
  if (this != &other) {
    Release();
    data_ = std::exchange(other.data_, nullptr);
    size_ = std::exchange(other.size_, 0);
  }
  return *this;
}

void DeviceBuffer::Release() {
  // cudaFree synchronizes the device; an error here (e.g. a sticky error from an earlier faulting
  // kernel) has already been reported by the call that caused it, and a destructor cannot return
  // it.
  if (data_ != nullptr) (void)cudaFree(data_);
  data_ = nullptr;
  size_ = 0;
}

absl::StatusOr<DeviceBuffer> DeviceBuffer::Allocate(size_t bytes) {
  DeviceBuffer buffer;
  if (bytes == 0) return buffer;
  CUDA_RETURN_IF_ERROR(cudaMalloc(&buffer.data_, bytes));
  buffer.size_ = bytes;
  return buffer;
}

absl::StatusOr<DeviceBuffer> DeviceBuffer::FromHost(const void* host, size_t bytes) {
  absl::StatusOr<DeviceBuffer> buffer = Allocate(bytes);
  if (!buffer.ok()) return buffer.status();
  absl::Status status = buffer->CopyFromHost(host, bytes);
  if (!status.ok()) return status;
  return buffer;
}

absl::Status DeviceBuffer::CopyFromHost(const void* host, size_t bytes, size_t offset) {
  absl::Status status = CheckRange(offset, bytes, size_, "CopyFromHost");
  if (!status.ok() || bytes == 0) return status;
  CUDA_RETURN_IF_ERROR(
      cudaMemcpy(static_cast<char*>(data_) + offset, host, bytes, cudaMemcpyHostToDevice));
  return absl::OkStatus();
}

absl::Status DeviceBuffer::CopyToHost(void* host, size_t bytes, size_t offset) const {
  absl::Status status = CheckRange(offset, bytes, size_, "CopyToHost");
  if (!status.ok() || bytes == 0) return status;
  CUDA_RETURN_IF_ERROR(
      cudaMemcpy(host, static_cast<const char*>(data_) + offset, bytes, cudaMemcpyDeviceToHost));
  return absl::OkStatus();
}

absl::Status DeviceBuffer::Fill(uint8_t value) {
  if (size_ == 0) return absl::OkStatus();
  CUDA_RETURN_IF_ERROR(cudaMemset(data_, value, size_));
  return absl::OkStatus();
}

}  // namespace spqr
