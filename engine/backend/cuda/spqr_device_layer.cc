#include "engine/backend/cuda/spqr_device_layer.h"

#include "engine/backend/cuda/kernel_launch_checks.h"
#include "engine/format/bit_packing.h"
#include "engine/util/status_macros.h"

namespace spqr {
namespace {

template <typename T>
absl::StatusOr<DeviceBuffer> UploadVector(const std::vector<T>& host) {
  return DeviceBuffer::FromVector(host);
}

}  // namespace

absl::Status CheckSpqrLayerView(const SpqrLayerDeviceView& v, const char* op) {
  RETURN_IF_ERROR(CheckInRange(v.out_features, 1, kMaxKernelRows, op, "layer.out_features"));
  RETURN_IF_ERROR(CheckInRange(v.in_features, 1, 0xffffffffLL, op, "layer.in_features"));
  RETURN_IF_ERROR(CheckInRange(v.wbits, 2, 8, op, "layer.wbits"));
  RETURN_IF_ERROR(CheckInRange(v.beta1, 1, v.in_features, op, "layer.beta1"));
  RETURN_IF_ERROR(CheckInRange(v.beta2, 1, kMaxKernelRows, op, "layer.beta2"));
  RETURN_IF_ERROR(CheckInRange(v.fp16_arithmetic, 0, 1, op, "layer.fp16_arithmetic"));
  RETURN_IF_ERROR(CheckNotNull(v.weight_codes, op, "layer.weight_codes"));
  RETURN_IF_ERROR(CheckNotNull(v.outlier_row_offsets, op, "layer.outlier_row_offsets"));
  RETURN_IF_ERROR(CheckNotNull(v.perm, op, "layer.perm"));
  if (v.stats_bits == kFp16Stats) {
    RETURN_IF_ERROR(CheckNotNull(v.scale_f16, op, "layer.scale_f16"));
    RETURN_IF_ERROR(CheckNotNull(v.zero_f16, op, "layer.zero_f16"));
  } else {
    RETURN_IF_ERROR(CheckInRange(v.stats_bits, 3, 8, op, "layer.stats_bits"));
    RETURN_IF_ERROR(CheckNotNull(v.scale_codes, op, "layer.scale_codes"));
    RETURN_IF_ERROR(CheckNotNull(v.zero_codes, op, "layer.zero_codes"));
    RETURN_IF_ERROR(CheckNotNull(v.second_level, op, "layer.second_level"));
  }
  return absl::OkStatus();
}

absl::StatusOr<SpqrDeviceLayer> SpqrDeviceLayer::Upload(const PackedSpqrLayer& layer,
                                                        const std::string& name) {
  RETURN_IF_ERROR(ValidateSpqrLayer(layer, name));
  SpqrDeviceLayer out;
  ASSIGN_OR_RETURN(out.weight_codes_, UploadVector(layer.weight_codes));
  ASSIGN_OR_RETURN(out.scale_codes_, UploadVector(layer.scale_codes));
  ASSIGN_OR_RETURN(out.zero_codes_, UploadVector(layer.zero_codes));
  ASSIGN_OR_RETURN(out.second_level_, UploadVector(layer.second_level));
  ASSIGN_OR_RETURN(out.scale_f16_, UploadVector(layer.scale_f16));
  ASSIGN_OR_RETURN(out.zero_f16_, UploadVector(layer.zero_f16));
  ASSIGN_OR_RETURN(out.outlier_row_offsets_, UploadVector(layer.outlier_row_offsets));
  if (layer.wide_column_ids()) {
    ASSIGN_OR_RETURN(out.outlier_cols_, UploadVector(layer.outlier_cols_u32));
  } else {
    ASSIGN_OR_RETURN(out.outlier_cols_, UploadVector(layer.outlier_cols_u16));
  }
  ASSIGN_OR_RETURN(out.outlier_values_, UploadVector(layer.outlier_values));
  ASSIGN_OR_RETURN(out.perm_, UploadVector(layer.perm));

  SpqrLayerDeviceView& v = out.view_;
  v.out_features = layer.out_features;
  v.in_features = layer.in_features;
  v.wbits = layer.wbits;
  v.beta1 = layer.beta1;
  v.beta2 = layer.beta2;
  v.stats_bits = layer.stats_bits;
  v.fp16_arithmetic = layer.fp16_arithmetic() ? 1 : 0;
  v.num_groups = layer.num_groups();
  v.weight_row_words = BitRowWords(layer.in_features, layer.wbits);
  v.stat_row_words =
      layer.stats_bits == kFp16Stats ? 0 : BitRowWords(layer.num_groups(), layer.stats_bits);
  v.weight_codes = out.weight_codes_.as<uint32_t>();
  v.scale_codes = out.scale_codes_.as<uint32_t>();
  v.zero_codes = out.zero_codes_.as<uint32_t>();
  v.second_level = out.second_level_.as<uint16_t>();
  v.scale_f16 = out.scale_f16_.as<uint16_t>();
  v.zero_f16 = out.zero_f16_.as<uint16_t>();
  v.outlier_row_offsets = out.outlier_row_offsets_.as<uint32_t>();
  if (layer.wide_column_ids()) {
    v.outlier_cols_u32 = out.outlier_cols_.as<uint32_t>();
  } else {
    v.outlier_cols_u16 = out.outlier_cols_.as<uint16_t>();
  }
  v.outlier_values = out.outlier_values_.as<uint16_t>();
  v.perm = out.perm_.as<uint32_t>();
  return out;
}

int64_t SpqrDeviceLayer::device_bytes() const {
  int64_t total = 0;
  for (const DeviceBuffer* b :
       {&weight_codes_, &scale_codes_, &zero_codes_, &second_level_, &scale_f16_, &zero_f16_,
        &outlier_row_offsets_, &outlier_cols_, &outlier_values_, &perm_}) {
    total += static_cast<int64_t>(b->size());
  }
  return total;
}

}  // namespace spqr
