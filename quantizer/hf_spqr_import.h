// Import of one linear layer stored in the layout transformers loads for quant_method "spqr" (the
// authors' spqr_quant package, QuantizedLinear; docs/model-format.md section 11) into a
// PackedSpqrLayer of spqr-format 1.
//
// Their layout (3-bit weights, tiles of 16 rows x 16 columns; in their naming beta1 is the tile
// HEIGHT and beta2 the WIDTH, the opposite of the paper and of our format):
//   <prefix>.dense_weights  I64 [m*n/16]: one 64-bit word per (row tile ti, column tile tj, row k)
//       at index (ti * n/16 + tj) * 16 + k; bits 0-2 scale code, 3-5 zero code, 6+3j..8+3j the
//       code of column tj*16+j (permuted order), bits 54-63 a fragment of the tile's 64-bit
//       second-order word: that word is OR_k (word_k >> 54) << (8 * (k / 2)), and holds four fp16
//       values: bits 0-15 scale of scales, 16-31 scale of zeros, 32-47 zero of scales, 48-63 zero
//       of zeros.
//   <prefix>.row_offsets    I32 [m+1] CSR, or [m/16+1] "PTCSR" (each 16-row block's outliers
//       interleaved: entry e of a block belongs to row e % 16; all-zero entries are padding).
//   <prefix>.col_vals       I32 [nnz]: low 16 bits column (permuted position, a signed short in
//       their kernels), high 16 bits the fp16 value ADDED to the dense decode.
//   <prefix>.in_perm        I32 [n/2]: perm[2i] = low 16 bits, perm[2i+1] = high 16 bits of entry
//   i;
//       [0] = identity.
//
// Every code and statistic is carried over unchanged (beta1 = 16 columns, beta2 = 16 rows,
// stats_bits = 3 in our naming). Their decoders evaluate scale, zero, weight and the outlier sum
// in fp16 (each step rounded to fp16), so the layer gets the "fp16 arithmetic" decode variant
// (SpqrDecodeArithmetic::kFp16) and decodes bit for bit to their output.
#pragma once

#include <cstdint>
#include <string>

#include "absl/status/statusor.h"
#include "engine/format/spqr_layer.h"
#include "engine/format/spqr_tensors.h"

namespace spqr {

// Tile size and bit width of the only layout the authors' kernels implement.
inline constexpr int kHfSpqrTile = 16;
inline constexpr int kHfSpqrBits = 3;

// Reads the four tensors under `prefix` for a layer of shape [m][n] and converts them.
// INVALID_ARGUMENT naming the tensor and the problem for missing tensors, wrong dtypes or sizes,
// shapes the layout cannot hold (m or n not a multiple of 16, n > 32768), malformed CSR/PTCSR,
// duplicate outlier positions, column ids out of range, a permutation that is not one, or
// non-finite fp16 values (ValidateSpqrLayer).
absl::StatusOr<PackedSpqrLayer> ImportHfSpqrLayer(const TensorLookup& lookup,
                                                  const std::string& prefix, int64_t m, int64_t n);

}  // namespace spqr
