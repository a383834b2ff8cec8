#include "engine/backend/cuda/spqr_gpu_layout.h"

#include <algorithm>
#include <type_traits>

#include "absl/strings/str_cat.h"
#include "engine/backend/cuda/kernel_launch_checks.h"
#include "engine/format/bit_packing.h"
#include "engine/util/half.h"
#include "engine/util/status_macros.h"

namespace spqr {
namespace {

// 32-bit word index (in the codes array) of stream word `w` of chunk `c` of row `r`.
int64_t CodeWordIndex(const SpqrGpuLayout& l, int64_t r, int64_t c, int64_t w) {
  const int64_t tile = c / kSpqrGpuTileChunks, lane = c % kSpqrGpuTileChunks;
  const int64_t active = std::min<int64_t>(kSpqrGpuTileChunks, l.lane_chunks - tile * 32);
  const int64_t word16 =
      r * l.lane_chunks * l.wbits + tile * kSpqrGpuTileChunks * l.wbits + (w / 4) * active + lane;
  return word16 * 4 + w % 4;
}

// Stream bits [bit, bit + bits) of one chunk (bits <= 16), reading words through CodeWordIndex.
uint32_t ChunkBits(const SpqrGpuLayout& l, int64_t r, int64_t c, int64_t bit, int bits) {
  const int64_t w = bit / 32;
  const int shift = static_cast<int>(bit % 32);
  uint64_t v = l.codes[CodeWordIndex(l, r, c, w)] >> shift;
  if (shift + bits > 32) v |= uint64_t{l.codes[CodeWordIndex(l, r, c, w + 1)]} << (32 - shift);
  return static_cast<uint32_t>(v) & ((1u << bits) - 1u);
}

template <typename V>
int64_t Bytes(const V& v) {
  return static_cast<int64_t>(v.size() * sizeof(typename V::value_type));
}

}  // namespace

absl::StatusOr<SpqrGpuLayout> BuildSpqrGpuLayout(const PackedSpqrLayer& p,
                                                 const std::string& name) {
  RETURN_IF_ERROR(ValidateSpqrLayer(p, name));
  SpqrGpuLayout l;
  l.out_features = p.out_features;
  l.in_features = p.in_features;
  l.wbits = p.wbits;
  l.beta1 = p.beta1;
  l.beta2 = p.beta2;
  l.stats_bits = p.stats_bits;
  l.fp16_arithmetic = p.fp16_arithmetic();
  l.num_groups = p.num_groups();
  l.lane_chunks = (p.in_features + kSpqrGpuChunkCols - 1) / kSpqrGpuChunkCols;
  const int64_t m = p.out_features, n = p.in_features, groups = l.num_groups;
  const int wb = p.wbits;

  // Codes: unpack each row and write chunk bit streams at their interleaved positions.
  l.codes.assign(static_cast<size_t>(m * l.lane_chunks * wb * 4), 0u);
  std::vector<uint8_t> row(static_cast<size_t>(n));
  for (int64_t r = 0; r < m; ++r) {
    UnpackBitRow(p.weight_codes.data() + r * BitRowWords(n, wb), n, wb, row.data());
    for (int64_t j = 0; j < n; ++j) {
      const int64_t c = j / kSpqrGpuChunkCols;
      const int64_t bit = (j % kSpqrGpuChunkCols) * wb;
      const int shift = static_cast<int>(bit % 32);
      const uint32_t code = row[j];
      l.codes[CodeWordIndex(l, r, c, bit / 32)] |= code << shift;
      if (shift + wb > 32) l.codes[CodeWordIndex(l, r, c, bit / 32 + 1)] |= code >> (32 - shift);
    }
  }

  // First-level statistics.
  if (p.stats_bits == kFp16Stats) {
    l.stat_row_words = groups;
    l.stats.resize(static_cast<size_t>(m * groups));
    for (int64_t i = 0; i < m * groups; ++i) {
      l.stats[i] = uint32_t{p.scale_f16[i]} | uint32_t{p.zero_f16[i]} << 16;
    }
  } else {
    const int sb = p.stats_bits;
    l.stat_row_words = BitRowWords(groups, 2 * sb);
    l.stats.assign(static_cast<size_t>(m * l.stat_row_words), 0u);
    const int64_t in_words = BitRowWords(groups, sb);
    for (int64_t r = 0; r < m; ++r) {
      for (int64_t g = 0; g < groups; ++g) {
        const uint32_t qs = GetCode(p.scale_codes.data() + r * in_words, g, sb);
        const uint32_t qz = GetCode(p.zero_codes.data() + r * in_words, g, sb);
        PutCode(l.stats.data() + r * l.stat_row_words, g, 2 * sb, qs | qz << sb);
      }
    }
    l.second_level = p.second_level;
  }

  // Outliers.
  l.outlier_row_offsets = p.outlier_row_offsets;
  const int64_t nnz = p.num_outliers();
  l.outlier_records.reserve(static_cast<size_t>(l.wide_columns() ? 2 * nnz : nnz));
  for (int64_t k = 0; k < nnz; ++k) {
    if (l.wide_columns()) {
      l.outlier_records.push_back(p.outlier_col(k));
      l.outlier_records.push_back(p.outlier_values[k]);
    } else {
      l.outlier_records.push_back(p.outlier_col(k) | uint32_t{p.outlier_values[k]} << 16);
    }
  }
  l.perm = p.perm;
  return l;
}

void DecodeSpqrGpuLayoutRow(const SpqrGpuLayout& l, int64_t r, float* out) {
  const int64_t n = l.in_features;
  for (int64_t j = 0; j < n; ++j) {
    const int64_t g = j / l.beta1;
    float scale, zero;
    if (l.stats_bits == kFp16Stats) {
      const uint32_t v = l.stats[r * l.stat_row_words + g];
      scale = F16ToF32(static_cast<uint16_t>(v & 0xffffu));
      zero = F16ToF32(static_cast<uint16_t>(v >> 16));
    } else {
      const int sb = l.stats_bits;
      const uint32_t pair = GetCode(l.stats.data() + r * l.stat_row_words, g, 2 * sb);
      const uint16_t* s = &l.second_level[((r / l.beta2) * l.num_groups + g) * 4];
      const uint32_t qs = pair & ((1u << sb) - 1u), qz = pair >> sb;
      scale = l.fp16_arithmetic ? DequantSecondLevelF16(qs, s[0], s[1])
                                : DequantSecondLevel(qs, s[0], s[1]);
      zero = l.fp16_arithmetic ? DequantSecondLevelF16(qz, s[2], s[3])
                               : DequantSecondLevel(qz, s[2], s[3]);
    }
    const uint32_t code =
        ChunkBits(l, r, j / kSpqrGpuChunkCols, (j % kSpqrGpuChunkCols) * l.wbits, l.wbits);
    out[j] =
        l.fp16_arithmetic ? DequantWeightF16(code, scale, zero) : DequantWeight(code, scale, zero);
  }
  for (uint32_t k = l.outlier_row_offsets[r]; k < l.outlier_row_offsets[r + 1]; ++k) {
    uint32_t col;
    uint16_t value;
    if (l.wide_columns()) {
      col = l.outlier_records[2 * k];
      value = static_cast<uint16_t>(l.outlier_records[2 * k + 1]);
    } else {
      col = l.outlier_records[k] & 0xffffu;
      value = static_cast<uint16_t>(l.outlier_records[k] >> 16);
    }
    out[col] = AddOutlier(l.fp16_arithmetic, out[col], F16ToF32(value));
  }
}

int64_t SpqrGpuLayoutBytes(const SpqrGpuLayout& l) {
  return Bytes(l.codes) + Bytes(l.stats) + Bytes(l.second_level) + Bytes(l.outlier_row_offsets) +
         Bytes(l.outlier_records) + Bytes(l.perm);
}

int64_t SpqrGpuLayoutBytesFor(int64_t m, int64_t n, int wbits, int beta1, int beta2, int stats_bits,
                              int64_t num_outliers) {
  const int64_t groups = n / beta1;
  const int64_t chunks = (n + kSpqrGpuChunkCols - 1) / kSpqrGpuChunkCols;
  const int64_t codes = m * chunks * wbits * 16;
  const int64_t stats = stats_bits == kFp16Stats ? m * groups * 4
                                                 : m * BitRowWords(groups, 2 * stats_bits) * 4 +
                                                       (m + beta2 - 1) / beta2 * groups * 8;
  const int64_t outliers = (m + 1) * 4 + num_outliers * (n > 65535 ? 8 : 4);
  return codes + stats + outliers + n * 4;
}

absl::Status CheckSpqrGpuLayerView(const SpqrGpuLayerView& v, const char* op) {
  RETURN_IF_ERROR(CheckInRange(v.out_features, 1, kMaxKernelRows, op, "layer.out_features"));
  RETURN_IF_ERROR(CheckInRange(v.in_features, 1, kMaxKernelRows, op, "layer.in_features"));
  RETURN_IF_ERROR(CheckInRange(v.wbits, 2, 8, op, "layer.wbits"));
  RETURN_IF_ERROR(CheckInRange(v.beta1, 1, v.in_features, op, "layer.beta1"));
  if (v.in_features % v.beta1 != 0 || v.num_groups != v.in_features / v.beta1) {
    return absl::InvalidArgumentError(absl::StrCat(op, ": layer.beta1 = ", v.beta1,
                                                   " does not give num_groups = ", v.num_groups,
                                                   " groups of in_features = ", v.in_features));
  }
  if (v.lane_chunks != (v.in_features + kSpqrGpuChunkCols - 1) / kSpqrGpuChunkCols) {
    return absl::InvalidArgumentError(
        absl::StrCat(op, ": layer.lane_chunks = ", v.lane_chunks, " does not match in_features"));
  }
  RETURN_IF_ERROR(CheckInRange(v.beta2, 1, kMaxKernelRows, op, "layer.beta2"));
  RETURN_IF_ERROR(CheckInRange(v.fp16_arithmetic, 0, 1, op, "layer.fp16_arithmetic"));
  RETURN_IF_ERROR(CheckNotNull(v.codes, op, "layer.codes"));
  if (reinterpret_cast<uintptr_t>(v.codes) % 16 != 0) {
    return absl::InvalidArgumentError(absl::StrCat(op, ": layer.codes is not 16-byte aligned"));
  }
  RETURN_IF_ERROR(CheckNotNull(v.stats, op, "layer.stats"));
  RETURN_IF_ERROR(CheckNotNull(v.outlier_row_offsets, op, "layer.outlier_row_offsets"));
  RETURN_IF_ERROR(CheckNotNull(v.perm, op, "layer.perm"));
  if (v.stats_bits != kFp16Stats) {
    RETURN_IF_ERROR(CheckInRange(v.stats_bits, 3, 8, op, "layer.stats_bits"));
    RETURN_IF_ERROR(CheckNotNull(v.second_level, op, "layer.second_level"));
  }
  return absl::OkStatus();
}

absl::StatusOr<SpqrGpuDeviceLayer> SpqrGpuDeviceLayer::Upload(const SpqrGpuLayout& l) {
  SpqrGpuDeviceLayer out;
  ASSIGN_OR_RETURN(out.codes_, DeviceBuffer::FromVector(l.codes));
  ASSIGN_OR_RETURN(out.stats_, DeviceBuffer::FromVector(l.stats));
  ASSIGN_OR_RETURN(out.second_level_, DeviceBuffer::FromVector(l.second_level));
  ASSIGN_OR_RETURN(out.outlier_row_offsets_, DeviceBuffer::FromVector(l.outlier_row_offsets));
  ASSIGN_OR_RETURN(out.outlier_records_, DeviceBuffer::FromVector(l.outlier_records));
  ASSIGN_OR_RETURN(out.perm_, DeviceBuffer::FromVector(l.perm));
  SpqrGpuLayerView& v = out.view_;
  v.out_features = l.out_features;
  v.in_features = l.in_features;
  v.wbits = l.wbits;
  v.beta1 = l.beta1;
  v.beta2 = l.beta2;
  v.stats_bits = l.stats_bits;
  v.fp16_arithmetic = l.fp16_arithmetic ? 1 : 0;
  v.num_groups = l.num_groups;
  v.lane_chunks = l.lane_chunks;
  v.stat_row_words = l.stat_row_words;
  v.codes = out.codes_.as<uint32_t>();
  v.stats = out.stats_.as<uint32_t>();
  v.second_level = out.second_level_.as<uint16_t>();
  v.outlier_row_offsets = out.outlier_row_offsets_.as<uint32_t>();
  v.outlier_records = out.outlier_records_.as<uint32_t>();
  v.perm = out.perm_.as<uint32_t>();
  return out;
}

absl::StatusOr<SpqrGpuDeviceLayer> SpqrGpuDeviceLayer::FromPacked(const PackedSpqrLayer& layer,
                                                                  const std::string& name) {
  ASSIGN_OR_RETURN(SpqrGpuLayout layout, BuildSpqrGpuLayout(layer, name));
  return Upload(layout);
}

int64_t SpqrGpuDeviceLayer::device_bytes() const {
  int64_t total = 0;
  for (const DeviceBuffer* b :
       {&codes_, &stats_, &second_level_, &outlier_row_offsets_, &outlier_records_, &perm_}) {
    total += static_cast<int64_t>(b->size());
  }
  return total;
}

}  // namespace spqr
