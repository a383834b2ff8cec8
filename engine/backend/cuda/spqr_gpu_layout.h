// The GPU layout of a SpQR layer ("spqr-gpu-layout 1"): made once at load from a packed
// "spqr-format 1" layer (engine/format/spqr_layer.h), never stored on disk. It holds the same
// information in the same number of bits (all compressed), arranged for the GPU kernels of
// spqr_gpu_linear.cuh:
//
// Codes. Each output row's permuted columns are cut into lane chunks of 128 columns
// (L = ceil(n / 128) chunks; the last one zero-padded). A chunk is a little-endian bit stream of
// 128 codes x wbits bits = wbits 16-byte words (code k at stream bits [k*wbits, (k+1)*wbits);
// stream word w is 32-bit component w % 4 of 16-byte word w / 4). 32 consecutive chunks of a row
// form a tile (4096 columns, the last tile of a row has A = L - 32t <= 32 chunks). Inside a tile
// the 16-byte words are interleaved: word q of chunk l (l < A) is at tile_base + q * A + l, so when
// lane l of a warp reads chunk l, every one of its wbits 128-bit loads is one fully coalesced
// 512-byte (A * 16) transaction, and a tile's codes are contiguous. Rows follow each other (row r
// starts at 16-byte word r * L * wbits).
//
// First-level statistics, kept compressed beside each row's codes:
//   stats_bits < 16: row r holds one bit stream of G pairs, pair g = scale_code | zero_code <<
//     stats_bits (2 * stats_bits bits), rows padded to 32-bit words (stat_row_words);
//   stats_bits == 16: one 32-bit word per (row, group): scale fp16 | zero fp16 << 16.
// Second-level statistics: [ceil(m / beta2)][G] 8-byte records of four fp16 values (scale and zero
// of the scales, scale and zero of the zeros), read with one 64-bit load per (row block, group).
// Outliers: per-row CSR, row offsets [m + 1] and one record per outlier in a single stream:
// n <= 65535: one 32-bit word (permuted column | fp16 residual << 16); wider layers: two words
// (column, residual). Permutation: n 32-bit indices, applied to x once per call.
//
// Decoding is exactly the format's (spqr_layer.h): w(r, j) = scale * (float(code) - zero) with the
// bilevel statistics dequantized as s * (float(code) - z), fp32, one rounding per operation, plus
// the fp16 residual of an outlier; for an "fp16 arithmetic" layer every step rounded to fp16 (the
// format's variant; the generic dequantize kernel and the decode kernel implement it, the
// tensor-core kernel does not, spqr_gpu_linear.cuh). DecodeSpqrGpuLayoutRow() is the host decoder
// of this layout and the tests hold it (and the device dequantize kernels) to DequantizeSpqrLayer()
// bit for bit; the decode kernel uses a one-FMA form of the weight within a stated bound
// (spqr_gpu_linear.cuh).
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "engine/backend/cuda/device_buffer.h"
#include "engine/format/spqr_layer.h"

namespace spqr {

inline constexpr int kSpqrGpuChunkCols = 128;  // columns per lane chunk
inline constexpr int kSpqrGpuTileChunks = 32;  // chunks per tile (one per lane of a warp)

// Host copy of the layout (what is uploaded). Arrays as described above.
struct SpqrGpuLayout {
  int64_t out_features = 0;  // m
  int64_t in_features = 0;   // n
  int wbits = 0, beta1 = 0, beta2 = 0, stats_bits = 0;
  bool fp16_arithmetic = false;               // the format's "fp16 arithmetic" decode variant
  int64_t num_groups = 0;                     // G = n / beta1
  int64_t lane_chunks = 0;                    // L = ceil(n / 128)
  int64_t stat_row_words = 0;                 // 32-bit words of one row's statistics
  std::vector<uint32_t> codes;                // m * L * wbits * 4 words
  std::vector<uint32_t> stats;                // m * stat_row_words
  std::vector<uint16_t> second_level;         // ceil(m / beta2) * G * 4 (empty for fp16 statistics)
  std::vector<uint32_t> outlier_row_offsets;  // m + 1
  std::vector<uint32_t> outlier_records;      // nnz (narrow) or 2 * nnz (wide) words
  std::vector<uint32_t> perm;                 // n
  bool wide_columns() const { return in_features > 65535; }
};

// Repacks a layer (validated first with ValidateSpqrLayer; errors name `name`).
absl::StatusOr<SpqrGpuLayout> BuildSpqrGpuLayout(const PackedSpqrLayer& layer,
                                                 const std::string& name);

// Host decode of permuted row r of the layout into out[0..n) (including outliers).
void DecodeSpqrGpuLayoutRow(const SpqrGpuLayout& layout, int64_t r, float* out);

// Bytes of all arrays of the layout: what the GPU keeps per layer. Compare with
// SpqrLayerPayloadBytes() of the packed layer (same information; differences are the padding of
// rows to 128 columns and of statistic rows to 32 bits).
int64_t SpqrGpuLayoutBytes(const SpqrGpuLayout& layout);
// The same count from the shape and outlier count alone (bench/gpu/perf_model.py mirrors it).
int64_t SpqrGpuLayoutBytesFor(int64_t m, int64_t n, int wbits, int beta1, int beta2, int stats_bits,
                              int64_t num_outliers);

// Raw device pointers and shape, passed by value to kernels. `codes` is 16-byte aligned.
struct SpqrGpuLayerView {
  int64_t out_features = 0, in_features = 0;
  int32_t wbits = 0, beta1 = 0, beta2 = 0, stats_bits = 0;
  int32_t fp16_arithmetic = 0;  // 1: the format's "fp16 arithmetic" decode variant
  int64_t num_groups = 0, lane_chunks = 0, stat_row_words = 0;
  const uint32_t* codes = nullptr;
  const uint32_t* stats = nullptr;
  const uint16_t* second_level = nullptr;  // null for fp16 statistics
  const uint32_t* outlier_row_offsets = nullptr;
  const uint32_t* outlier_records = nullptr;  // null without outliers
  const uint32_t* perm = nullptr;
};

// Checks a view is complete (shape positive and consistent, arrays the kind uses non-null,
// codes 16-byte aligned); INVALID_ARGUMENT naming `op` and the field.
absl::Status CheckSpqrGpuLayerView(const SpqrGpuLayerView& view, const char* op);

// The layout on the current device. Move-only (owns its buffers).
class SpqrGpuDeviceLayer {
 public:
  static absl::StatusOr<SpqrGpuDeviceLayer> Upload(const SpqrGpuLayout& layout);
  // BuildSpqrGpuLayout + Upload.
  static absl::StatusOr<SpqrGpuDeviceLayer> FromPacked(const PackedSpqrLayer& layer,
                                                       const std::string& name);
  const SpqrGpuLayerView& view() const { return view_; }
  int64_t device_bytes() const;

 private:
  SpqrGpuLayerView view_;
  DeviceBuffer codes_, stats_, second_level_, outlier_row_offsets_, outlier_records_, perm_;
};

}  // namespace spqr
