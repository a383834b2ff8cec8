// Device-buffer helpers shared by the harness kernel tests (kernels_test.cc,
// forward_kernels_test.cc): random inputs, upload, and outputs pre-filled with NaN so that an
// element a kernel forgets to write shows up as a mismatch.
#pragma once

#include <cstddef>
#include <cstdint>
#include <random>
#include <utility>
#include <vector>

#include "absl/status/statusor.h"
#include "engine/backend/cuda/device_buffer.h"
#include "gtest/gtest.h"

namespace spqr::emu_test {

inline constexpr uint8_t kPoison = 0xff;  // every byte 0xff: NaN as fp32

inline std::vector<float> RandomNormal(size_t n, float stddev, std::mt19937& rng) {
  std::normal_distribution<float> dist(0.0f, stddev);
  std::vector<float> v(n);
  for (float& x : v) x = dist(rng);
  return v;
}

template <typename T>
DeviceBuffer Upload(const std::vector<T>& host) {
  absl::StatusOr<DeviceBuffer> b = DeviceBuffer::FromVector(host);
  EXPECT_TRUE(b.ok()) << b.status();
  return b.ok() ? std::move(*b) : DeviceBuffer();
}

// `bytes` of device memory filled with kPoison.
inline DeviceBuffer Poisoned(size_t bytes) {
  absl::StatusOr<DeviceBuffer> b = DeviceBuffer::Allocate(bytes);
  EXPECT_TRUE(b.ok()) << b.status();
  if (!b.ok()) return DeviceBuffer();
  EXPECT_TRUE(b->Fill(kPoison).ok());
  return std::move(*b);
}

}  // namespace spqr::emu_test
