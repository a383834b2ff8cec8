#include "engine/format/spqr_tensors.h"

#include <array>
#include <cstring>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "engine/format/bit_packing.h"

namespace spqr {
namespace {

std::array<uint32_t, 256> MakeCrcTable() {
  std::array<uint32_t, 256> table{};
  for (uint32_t i = 0; i < 256; ++i) {
    uint32_t c = i;
    for (int k = 0; k < 8; ++k) c = (c & 1u) ? 0xedb88320u ^ (c >> 1) : c >> 1;
    table[i] = c;
  }
  return table;
}

template <typename T>
OwnedTensor MakeTensor(std::string name, DType dtype, std::vector<int64_t> shape,
                       const std::vector<T>& values) {
  OwnedTensor t{std::move(name), dtype, std::move(shape), {}};
  t.bytes.resize(values.size() * sizeof(T));
  if (!values.empty()) std::memcpy(t.bytes.data(), values.data(), t.bytes.size());
  return t;
}

// The payload arrays in CRC order, with their tensor suffix, dtype and shape.
struct PayloadSpec {
  const char* suffix;
  DType dtype;
  std::vector<int64_t> shape;
};

std::vector<PayloadSpec> PayloadSpecs(const PackedSpqrLayer& l) {
  const int64_t m = l.out_features, n = l.in_features, g = l.num_groups();
  const int64_t nnz = l.num_outliers();
  std::vector<PayloadSpec> specs;
  specs.push_back({"spqr_weight_codes", DType::kU32, {m, BitRowWords(n, l.wbits)}});
  if (l.stats_bits == kFp16Stats) {
    specs.push_back({"spqr_scale", DType::kF16, {m, g}});
    specs.push_back({"spqr_zero", DType::kF16, {m, g}});
  } else {
    specs.push_back({"spqr_scale_codes", DType::kU32, {m, BitRowWords(g, l.stats_bits)}});
    specs.push_back({"spqr_zero_codes", DType::kU32, {m, BitRowWords(g, l.stats_bits)}});
    specs.push_back({"spqr_second_level", DType::kF16, {l.num_row_blocks(), g, 4}});
  }
  specs.push_back({"spqr_outlier_row_offsets", DType::kU32, {m + 1}});
  specs.push_back({"spqr_outlier_cols", l.wide_column_ids() ? DType::kU32 : DType::kU16, {nnz}});
  specs.push_back({"spqr_outlier_values", DType::kF16, {nnz}});
  specs.push_back({"spqr_perm", DType::kU32, {n}});
  return specs;
}

// Byte view of the layer array that backs payload tensor `suffix` (for writing and the CRC).
template <typename Layer>
auto& ArrayFor(Layer& l, const std::string& suffix) {
  if (suffix == "spqr_weight_codes") return l.weight_codes;
  if (suffix == "spqr_scale_codes") return l.scale_codes;
  if (suffix == "spqr_zero_codes") return l.zero_codes;
  if (suffix == "spqr_outlier_row_offsets") return l.outlier_row_offsets;
  if (suffix == "spqr_outlier_cols" && l.in_features > 65535) return l.outlier_cols_u32;
  return l.perm;  // "spqr_perm"
}
template <typename Layer>
auto& HalfArrayFor(Layer& l, const std::string& suffix) {
  if (suffix == "spqr_second_level") return l.second_level;
  if (suffix == "spqr_scale") return l.scale_f16;
  if (suffix == "spqr_zero") return l.zero_f16;
  if (suffix == "spqr_outlier_cols") return l.outlier_cols_u16;
  return l.outlier_values;  // "spqr_outlier_values"
}
bool IsHalfWidth(const PayloadSpec& s) { return s.dtype == DType::kF16 || s.dtype == DType::kU16; }

uint32_t PayloadCrc(const PackedSpqrLayer& l) {
  uint32_t crc = 0;
  for (const PayloadSpec& s : PayloadSpecs(l)) {
    if (IsHalfWidth(s)) {
      const auto& v = HalfArrayFor(l, s.suffix);
      crc = Crc32(v.data(), v.size() * sizeof(v[0]), crc);
    } else {
      const auto& v = ArrayFor(l, s.suffix);
      crc = Crc32(v.data(), v.size() * sizeof(v[0]), crc);
    }
  }
  // A nonzero variant is covered too, so a reader that does not know slot 10 fails the CRC rather
  // than decoding the layer with the fp32 arithmetic (and fp32 layers keep their old CRC).
  const uint32_t variant = static_cast<uint32_t>(l.decode_arithmetic);
  if (variant != 0) {
    const uint8_t bytes[4] = {static_cast<uint8_t>(variant), static_cast<uint8_t>(variant >> 8),
                              static_cast<uint8_t>(variant >> 16),
                              static_cast<uint8_t>(variant >> 24)};
    crc = Crc32(bytes, sizeof(bytes), crc);
  }
  return crc;
}

std::string ShapeString(const std::vector<int64_t>& shape) {
  return absl::StrCat("[", absl::StrJoin(shape, ", "), "]");
}

}  // namespace

uint32_t Crc32(const void* data, size_t size, uint32_t crc) {
  static const std::array<uint32_t, 256> table = MakeCrcTable();
  const auto* p = static_cast<const uint8_t*>(data);
  crc = ~crc;
  for (size_t i = 0; i < size; ++i) crc = table[(crc ^ p[i]) & 0xffu] ^ (crc >> 8);
  return ~crc;
}

bool HasSpqrLayer(const TensorLookup& lookup, const std::string& prefix) {
  return lookup(prefix + ".spqr_meta") != nullptr;
}

std::vector<OwnedTensor> SpqrLayerToTensors(const PackedSpqrLayer& l, const std::string& prefix) {
  std::vector<uint32_t> meta(kMetaSlots, 0u);
  meta[kMetaVersion] = kSpqrFormatVersion;
  meta[kMetaOutFeatures] = static_cast<uint32_t>(l.out_features);
  meta[kMetaInFeatures] = static_cast<uint32_t>(l.in_features);
  meta[kMetaWbits] = static_cast<uint32_t>(l.wbits);
  meta[kMetaBeta1] = static_cast<uint32_t>(l.beta1);
  meta[kMetaBeta2] = static_cast<uint32_t>(l.beta2);
  meta[kMetaStatsBits] = static_cast<uint32_t>(l.stats_bits);
  meta[kMetaNumOutliers] = static_cast<uint32_t>(l.num_outliers());
  meta[kMetaColumnIdBits] = l.wide_column_ids() ? 32u : 16u;
  meta[kMetaCrc32] = PayloadCrc(l);
  meta[kMetaDecodeArithmetic] = static_cast<uint32_t>(l.decode_arithmetic);
  std::vector<OwnedTensor> out;
  out.push_back(MakeTensor(prefix + ".spqr_meta", DType::kU32, {kMetaSlots}, meta));
  for (const PayloadSpec& s : PayloadSpecs(l)) {
    std::string name = absl::StrCat(prefix, ".", s.suffix);
    if (IsHalfWidth(s)) {
      out.push_back(MakeTensor(std::move(name), s.dtype, s.shape, HalfArrayFor(l, s.suffix)));
    } else {
      out.push_back(MakeTensor(std::move(name), s.dtype, s.shape, ArrayFor(l, s.suffix)));
    }
  }
  return out;
}

absl::StatusOr<PackedSpqrLayer> SpqrLayerFromTensors(const TensorLookup& lookup,
                                                     const std::string& prefix) {
  const std::string meta_name = prefix + ".spqr_meta";
  const TensorView* meta_t = lookup(meta_name);
  if (meta_t == nullptr) {
    return absl::NotFoundError(absl::StrCat("missing SpQR tensor '", meta_name, "'"));
  }
  if (meta_t->dtype != DType::kU32 || meta_t->shape != std::vector<int64_t>{kMetaSlots} ||
      meta_t->nbytes != kMetaSlots * sizeof(uint32_t)) {
    return absl::InvalidArgumentError(
        absl::StrCat("tensor '", meta_name, "' must be U32 [", kMetaSlots, "], got ",
                     std::string(DTypeName(meta_t->dtype)), " ", ShapeString(meta_t->shape)));
  }
  std::vector<uint32_t> meta(kMetaSlots);
  std::memcpy(meta.data(), meta_t->data, kMetaSlots * sizeof(uint32_t));
  if (meta[kMetaVersion] != kSpqrFormatVersion) {
    return absl::FailedPreconditionError(
        absl::StrCat("tensor '", meta_name, "': unsupported spqr-format version ",
                     meta[kMetaVersion], " (this build reads version ", kSpqrFormatVersion, ")"));
  }
  for (int slot = kMetaFirstReserved; slot < kMetaSlots; ++slot) {
    if (meta[slot] != 0) {
      return absl::InvalidArgumentError(
          absl::StrCat("tensor '", meta_name, "': reserved slot ", slot, " is ", meta[slot],
                       ", expected 0 (written by a newer format revision?)"));
    }
  }
  if (meta[kMetaDecodeArithmetic] > static_cast<uint32_t>(SpqrDecodeArithmetic::kFp16)) {
    return absl::InvalidArgumentError(absl::StrCat(
        "tensor '", meta_name, "': unknown decode arithmetic ", meta[kMetaDecodeArithmetic],
        " in slot ", kMetaDecodeArithmetic, " (0 = fp32, 1 = fp16)"));
  }
  PackedSpqrLayer l;
  l.decode_arithmetic = static_cast<SpqrDecodeArithmetic>(meta[kMetaDecodeArithmetic]);
  l.out_features = meta[kMetaOutFeatures];
  l.in_features = meta[kMetaInFeatures];
  l.wbits = static_cast<int>(meta[kMetaWbits]);
  l.beta1 = static_cast<int>(meta[kMetaBeta1]);
  l.beta2 = static_cast<int>(meta[kMetaBeta2]);
  l.stats_bits = static_cast<int>(meta[kMetaStatsBits]);
  // Parameter checks before sizes are derived from them.
  if (l.out_features <= 0 || l.in_features <= 0 || l.wbits < 2 || l.wbits > 8 || l.beta1 < 1 ||
      l.in_features % l.beta1 != 0 || l.beta2 < 1 ||
      !((l.stats_bits >= 3 && l.stats_bits <= 8) || l.stats_bits == kFp16Stats)) {
    return absl::InvalidArgumentError(absl::StrCat(
        "tensor '", meta_name, "': inconsistent parameters out_features=", l.out_features,
        " in_features=", l.in_features, " wbits=", l.wbits, " beta1=", l.beta1, " beta2=", l.beta2,
        " stats_bits=", l.stats_bits));
  }
  if (meta[kMetaColumnIdBits] != (l.wide_column_ids() ? 32u : 16u)) {
    return absl::InvalidArgumentError(absl::StrCat("tensor '", meta_name, "': column id bits ",
                                                   meta[kMetaColumnIdBits],
                                                   " do not match in_features=", l.in_features));
  }
  // The counts in spqr_meta are untrusted: bound them before anything is sized from them. Shapes
  // derived below multiply m and n, so the product must stay far from int64 overflow, and the
  // outlier count can neither exceed the weights nor the bytes its tensor really holds (the
  // safetensors loader has bounded every tensor by the file size).
  constexpr int64_t kMaxLayerElements = int64_t{1} << 40;
  if (l.out_features > kMaxLayerElements / l.in_features) {
    return absl::InvalidArgumentError(
        absl::StrCat("tensor '", meta_name, "': shape ", l.out_features, " x ", l.in_features,
                     " exceeds the supported ", kMaxLayerElements, " weights per layer"));
  }
  const int64_t nnz = meta[kMetaNumOutliers];
  if (nnz > l.out_features * l.in_features) {
    return absl::InvalidArgumentError(absl::StrCat("tensor '", meta_name, "': ", nnz,
                                                   " outliers exceed the layer's ",
                                                   l.out_features * l.in_features, " weights"));
  }
  const std::string values_name = prefix + ".spqr_outlier_values";
  const TensorView* values_t = lookup(values_name);
  if (values_t == nullptr) {
    return absl::NotFoundError(absl::StrCat("missing SpQR tensor '", values_name, "'"));
  }
  if (values_t->nbytes != static_cast<size_t>(nnz) * sizeof(uint16_t)) {
    return absl::InvalidArgumentError(absl::StrCat("tensor '", meta_name, "' counts ", nnz,
                                                   " outliers but '", values_name, "' holds ",
                                                   values_t->nbytes, " bytes"));
  }
  // Size the outlier arrays so PayloadSpecs() derives the expected shapes.
  l.outlier_values.resize(static_cast<size_t>(nnz));
  for (const PayloadSpec& s : PayloadSpecs(l)) {
    const std::string name = absl::StrCat(prefix, ".", s.suffix);
    const TensorView* t = lookup(name);
    if (t == nullptr) return absl::NotFoundError(absl::StrCat("missing SpQR tensor '", name, "'"));
    int64_t numel = 1;
    for (int64_t d : s.shape) numel *= d;
    if (t->dtype != s.dtype || t->shape != s.shape ||
        t->nbytes != static_cast<size_t>(numel) * DTypeSize(s.dtype)) {
      return absl::InvalidArgumentError(
          absl::StrCat("tensor '", name, "': expected ", std::string(DTypeName(s.dtype)), " ",
                       ShapeString(s.shape), ", found ", std::string(DTypeName(t->dtype)), " ",
                       ShapeString(t->shape)));
    }
    auto copy = [&](auto& v) {
      v.resize(static_cast<size_t>(numel));
      if (numel > 0) std::memcpy(v.data(), t->data, t->nbytes);
    };
    if (IsHalfWidth(s)) {
      copy(HalfArrayFor(l, s.suffix));
    } else {
      copy(ArrayFor(l, s.suffix));
    }
  }
  const uint32_t crc = PayloadCrc(l);
  if (crc != meta[kMetaCrc32]) {
    return absl::DataLossError(absl::StrCat("SpQR layer '", prefix, "': CRC-32 mismatch (stored ",
                                            meta[kMetaCrc32], ", computed ", crc,
                                            "); the file is corrupt"));
  }
  absl::Status st = ValidateSpqrLayer(l, absl::StrCat("SpQR layer '", prefix, "'"));
  if (!st.ok()) return st;
  return l;
}

}  // namespace spqr
