// Serialization of a PackedSpqrLayer to/from named tensors (the safetensors payload of an SpQR
// model directory; see docs/model-format.md, "spqr-format 1"). For a linear layer whose dense
// weight would be "<prefix>.weight", the tensors are:
//   <prefix>.spqr_meta                U32 [16]   version, shape, parameters, counts, CRC-32,
//                                                decode arithmetic
//   <prefix>.spqr_weight_codes        U32 [m, BitRowWords(n, wbits)]
//   <prefix>.spqr_scale_codes         U32 [m, BitRowWords(G, stats_bits)]   (stats_bits < 16)
//   <prefix>.spqr_zero_codes          U32 [m, BitRowWords(G, stats_bits)]   (stats_bits < 16)
//   <prefix>.spqr_second_level        F16 [ceil(m/beta2), G, 4]             (stats_bits < 16)
//   <prefix>.spqr_scale               F16 [m, G]                            (stats_bits == 16)
//   <prefix>.spqr_zero                F16 [m, G]                            (stats_bits == 16)
//   <prefix>.spqr_outlier_row_offsets U32 [m + 1]
//   <prefix>.spqr_outlier_cols        U16 [nnz]  (U32 when n > 65535)
//   <prefix>.spqr_outlier_values      F16 [nnz]
//   <prefix>.spqr_perm                U32 [n]
// Zero-element tensors (nnz == 0) are written with shape [0].
#pragma once

#include <cstdint>
#include <functional>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "engine/format/spqr_layer.h"
#include "engine/model/tensor.h"

namespace spqr {

// A tensor that owns its bytes (little-endian, row-major), ready to be written to safetensors.
struct OwnedTensor {
  std::string name;
  DType dtype = DType::kU8;
  std::vector<int64_t> shape;
  std::vector<uint8_t> bytes;
};

// meta[] slots of <prefix>.spqr_meta.
enum SpqrMetaSlot : int {
  kMetaVersion = 0,
  kMetaOutFeatures = 1,
  kMetaInFeatures = 2,
  kMetaWbits = 3,
  kMetaBeta1 = 4,
  kMetaBeta2 = 5,
  kMetaStatsBits = 6,
  kMetaNumOutliers = 7,
  kMetaColumnIdBits = 8,
  kMetaCrc32 = 9,  // CRC-32 (IEEE) over the payload tensors' bytes in the order listed above,
                   // then, for a nonzero decode arithmetic, the slot's 4 bytes (little-endian)
  // SpqrDecodeArithmetic: 0 fp32 (spqr-quantize), 1 fp16 (spqr-convert). Readers that predate the
  // slot ignored it; since a nonzero value also enters the CRC, they refuse such a layer (CRC
  // mismatch) instead of decoding it with fp32 arithmetic.
  kMetaDecodeArithmetic = 10,
  // 11..15 reserved: must be 0 (the reader refuses anything else, so a later use of a slot cannot
  // be ignored silently by this build).
  kMetaFirstReserved = 11,
  kMetaSlots = 16,
};

// True when the checkpoint holds an SpQR layer under `prefix` (i.e. <prefix>.spqr_meta exists).
using TensorLookup = std::function<const TensorView*(const std::string& name)>;
bool HasSpqrLayer(const TensorLookup& lookup, const std::string& prefix);

// The tensors that store `layer` under `prefix`.
std::vector<OwnedTensor> SpqrLayerToTensors(const PackedSpqrLayer& layer,
                                            const std::string& prefix);

// Reads (copies) the layer stored under `prefix`, checking the format version, every tensor's
// presence, dtype and shape, the CRC-32, and ValidateSpqrLayer(). Errors name the tensor.
absl::StatusOr<PackedSpqrLayer> SpqrLayerFromTensors(const TensorLookup& lookup,
                                                     const std::string& prefix);

// CRC-32 (IEEE 802.3, reflected, init/xorout 0xffffffff); `crc` chains calls (start with 0).
uint32_t Crc32(const void* data, size_t size, uint32_t crc = 0);

}  // namespace spqr
