// The int8 SpQR product over the tile layout (spqr_tile_layout.h): y = x W_hat^T for the rows of a
// range of row tiles, every token of the call, outliers included.
//
// Numerics ("int8" kernel). Activations are quantized per token and per unit of E = unit_cols
// permuted columns (QuantizeActivations): d = max|x| / 127, q = rint(x * (127 / max|x|)) in
// [-127, 127], and the unit's sum S = d * sum(q). With w = s * (code - z) the unit's contribution
// to row r is then exactly s * (d * sum(code * q) - z * S): the integer dot product is exact, the
// only approximation is x ~ d * q. Per row and token, in fp32 and in this order for units
// u = 0, 1, ...:  p = float(idot) * d;  v = fma(-z, S, p);  acc = fma(s, v, acc);
// then the row's outlier residuals times the UNquantized inputs join the same chain, in CSR
// order: acc = fma(value, x, acc) per outlier, and y = acc. (The layout's outlier steps hold the
// k-th outlier of every row of a tile in one vector, so a step is one 16-lane gather and one
// masked FMA into the rows' accumulators; blocks of 4+ tokens do the same FMAs with the tokens in
// the lanes, one broadcast per outlier.) Scale and zero are decoded exactly as the format does,
// the "fp16 arithmetic" variant included. On such a layer the per-weight fp16 rounding (w = h(h(s *
// h(q - z)) + v)) is not modelled: the kernel applies the fp16-rounded s and z to the codes in fp32
// and adds the residual unrounded (at most three fp16 roundings, 2^-11 relative each, per weight;
// measured in spqr_tile_kernel_test next to the int8 activation error, which is larger). Every
// implementation below computes this same sequence, so all give the same bits, and a token's result
// depends neither on the other tokens of the call nor on the thread count. What quantizing the
// activations costs in perplexity is measured against the exact kernel (docs/cpu-performance.md).
#pragma once

#include <cstdint>
#include <vector>

#include "engine/backend/cpu/spqr_tile_layout.h"

namespace spqr::cpu {

// Per-token int8 activations of one layer input, in the layer's permuted column order.
struct Int8Activations {
  std::vector<int8_t> q;     // [tokens][n]
  std::vector<float> scale;  // [tokens][units]  d
  std::vector<float> sum;    // [tokens][units]  S = d * sum(q)
  // The same unquantized inputs by blocks of kTokenBlock tokens, column-major inside a block:
  // [tokens / kTokenBlock rounded up][n][kTokenBlock], zero-padded; only for calls of at least
  // kMinVectorTokens tokens (the kernel's outlier pass for a block of that many tokens reads one
  // column's inputs for all of them in one load; smaller blocks gather from x_perm).
  static constexpr int kTokenBlock = 8;
  static constexpr int kMinVectorTokens = 4;
  std::vector<float> x_blocks;
  int64_t tokens = 0;
  int64_t n = 0;
  int64_t units = 0;
  int unit_cols = 16;
};

// Instruction sets the kernel has an implementation for.
enum class TileIsa { kScalar, kAvx512Vnni };
const char* TileIsaName(TileIsa isa);
// The best implementation this CPU runs (checked at run time with CPUID, so a portable build
// uses AVX-512 VNNI where the machine has it).
TileIsa BestTileIsa();
// Whether this CPU can run `isa`.
bool TileIsaSupported(TileIsa isa);

// Quantizes x_perm ([tokens][n] fp32) per token and per `unit_cols` columns (n a multiple of it),
// and from kMinVectorTokens tokens on also fills x_blocks. `isa` picks the implementation; all give
// the same bytes (the AVX-512 one skips NaN inputs in the unit's max and maps them to -127 as the
// scalar std::max/min sequence does).
void QuantizeActivations(const float* x_perm, int64_t tokens, int64_t n, int unit_cols,
                         Int8Activations* out, TileIsa isa = BestTileIsa());
// The same in two steps, so that callers can split the tokens across threads: size `out` for the
// call, then quantize tokens [t0, t1) (ranges that start at a multiple of kTokenBlock, or cover
// all tokens, write disjoint memory).
void PrepareInt8Activations(int64_t tokens, int64_t n, int unit_cols, Int8Activations* out);
void QuantizeActivationTokens(const float* x_perm, int64_t t0, int64_t t1, Int8Activations* out,
                              TileIsa isa = BestTileIsa());

// y[t * y_stride + r] for rows r of row tiles [tile_begin, tile_end) (rows >= m skipped) and all
// tokens t of `xq`. x_perm: the same activations unquantized, [tokens][n] (for the outliers).
// Single-threaded; callers split row tiles across threads.
void SpqrTileMatmulInt8(const SpqrTileLayout& layout, const Int8Activations& xq,
                        const float* x_perm, int64_t tile_begin, int64_t tile_end, float* y,
                        int64_t y_stride, TileIsa isa);

namespace internal {
// The AVX-512 VNNI implementation (spqr_tile_kernel_avx512.cc); call only where supported.
void SpqrTileMatmulInt8Avx512(const SpqrTileLayout& layout, const Int8Activations& xq,
                              const float* x_perm, int64_t tile_begin, int64_t tile_end, float* y,
                              int64_t y_stride);
// One unit of `unit_cols` inputs quantized as documented above (the reference), and one token's
// `n` inputs by the AVX-512 implementation (spqr_tile_kernel_avx512.cc; call only where supported).
void QuantizeUnitScalar(const float* x, int unit_cols, int8_t* q, float* scale, float* sum);
void QuantizeTokenAvx512(const float* x, int64_t n, int unit_cols, int8_t* q, float* scale,
                         float* sum);
// Writes y for rows 16*tile + i, i < 16, of tokens t < num_tokens: dense[t * 16 + i] with the
// row's outliers added as documented above (the reference implementation; the AVX-512 one does a
// step of the tile's 16 rows at a time, each row's chain in the same order, so the same bits).
// x_perm: the block's first token, tokens n floats apart; y: its first token's output.
void FinishRows(const SpqrTileLayout& layout, int64_t tile, const float* dense, int num_tokens,
                const float* x_perm, float* y, int64_t y_stride);
}  // namespace internal

}  // namespace spqr::cpu
