// Argument checks shared by the kernels' launch functions: each returns INVALID_ARGUMENT naming the
// op and the field, so that a bad call from the backend is an error, never an out-of-bounds access.
#pragma once

#include <cstdint>
#include <limits>

#include "absl/status/status.h"
#include "absl/strings/str_format.h"

namespace spqr {

inline absl::Status CheckNotNull(const void* pointer, const char* op, const char* field) {
  if (pointer == nullptr) {
    return absl::InvalidArgumentError(absl::StrFormat("%s: %s is null", op, field));
  }
  return absl::OkStatus();
}

// `value` must lie in [min_value, max_value].
inline absl::Status CheckInRange(int64_t value, int64_t min_value, int64_t max_value,
                                 const char* op, const char* field) {
  if (value < min_value || value > max_value) {
    return absl::InvalidArgumentError(
        absl::StrFormat("%s: %s = %d is outside [%d, %d]", op, field, value, min_value, max_value));
  }
  return absl::OkStatus();
}

// Grid dimensions above this are not launchable in y/z and not worth a 64-bit index in x.
inline constexpr int64_t kMaxKernelRows = std::numeric_limits<int32_t>::max();

}  // namespace spqr
