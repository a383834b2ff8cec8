// A packed SpQR layer ("spqr-format 1", docs/model-format.md) copied to device memory as is: the
// same arrays as PackedSpqrLayer (bit-row codes, statistics, CSR outliers, permutation), no
// repacking yet. The kernels take the raw-pointer view; the owning object keeps the buffers.
// No CUDA types here, so the runtime can hold device layers.
#pragma once

#include <cstdint>
#include <string>

#include "absl/status/statusor.h"
#include "engine/backend/cuda/device_buffer.h"
#include "engine/format/spqr_layer.h"

namespace spqr {

// Raw device pointers and shape of one layer, passed by value to kernels. Arrays that the layer's
// statistics kind does not use are null (scale/zero codes and second level for fp16 statistics;
// scale_f16/zero_f16 for bilevel ones); the outlier columns are read from outlier_cols_u32 when
// in_features > 65535, else from outlier_cols_u16 (null when the layer has no outliers).
struct SpqrLayerDeviceView {
  int64_t out_features = 0;  // m
  int64_t in_features = 0;   // n
  int32_t wbits = 0;
  int32_t beta1 = 0;
  int32_t beta2 = 0;
  int32_t stats_bits = 0;        // 3..8, or 16 (kFp16Stats)
  int32_t fp16_arithmetic = 0;   // 1: the format's "fp16 arithmetic" decode variant
  int64_t num_groups = 0;        // n / beta1
  int64_t weight_row_words = 0;  // BitRowWords(n, wbits)
  int64_t stat_row_words = 0;    // BitRowWords(num_groups, stats_bits); 0 for fp16 statistics
  const uint32_t* weight_codes = nullptr;
  const uint32_t* scale_codes = nullptr;
  const uint32_t* zero_codes = nullptr;
  const uint16_t* second_level = nullptr;
  const uint16_t* scale_f16 = nullptr;
  const uint16_t* zero_f16 = nullptr;
  const uint32_t* outlier_row_offsets = nullptr;  // m + 1
  const uint16_t* outlier_cols_u16 = nullptr;     // n <= 65535
  const uint32_t* outlier_cols_u32 = nullptr;     // n > 65535
  const uint16_t* outlier_values = nullptr;
  const uint32_t* perm = nullptr;
};

// Checks that a view is complete for its statistics kind (shape positive, the arrays the kind uses
// non-null). Outlier arrays may be null when the layer has no outliers. Launch functions call it;
// INVALID_ARGUMENT names `op` and the field. A view from SpqrDeviceLayer::view() always passes.
absl::Status CheckSpqrLayerView(const SpqrLayerDeviceView& view, const char* op);

class SpqrDeviceLayer {
 public:
  // Validates `layer` (ValidateSpqrLayer, so kernels never index out of range) and copies it to
  // the current device. `name` prefixes error messages.
  static absl::StatusOr<SpqrDeviceLayer> Upload(const PackedSpqrLayer& layer,
                                                const std::string& name);

  const SpqrLayerDeviceView& view() const { return view_; }
  // Device bytes this layer occupies (what a kernel must read at least once per product).
  int64_t device_bytes() const;

 private:
  SpqrLayerDeviceView view_;
  DeviceBuffer weight_codes_, scale_codes_, zero_codes_, second_level_, scale_f16_, zero_f16_;
  DeviceBuffer outlier_row_offsets_, outlier_cols_, outlier_values_, perm_;
};

}  // namespace spqr
