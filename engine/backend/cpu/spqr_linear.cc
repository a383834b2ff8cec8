#include "engine/backend/cpu/spqr_linear.h"

#include <algorithm>
#include <atomic>
#include <cmath>
#include <cstring>

#if defined(__AVX2__)
#include <immintrin.h>
#endif
#include <vector>

#include "engine/backend/cpu/simd.h"
#include "engine/backend/cpu/worker_pool.h"
#include "engine/format/bit_packing.h"
#include "engine/format/spqr_fused_f16.h"
#include "engine/format/spqr_layer.h"
#include "engine/format/spqr_matmul.h"
#include "engine/util/half.h"

namespace spqr::cpu {
namespace {

// Output rows per work item before rounding up to a multiple of beta2: enough work to amortize the
// per-item setup, small enough that 2..16 threads balance on a few-hundred-row projection.
constexpr int64_t kRowsPerItem = 32;
// Tokens whose products share one decode of a row: NT x B1 accumulators stay in registers.
constexpr int kMaxTileTokens = 4;

// Row r times NT tokens with the decode fused into the product, each weight computed once and used
// for all NT tokens. Per token this is exactly the format's batch-1 FusedRowDot (engine/format/
// spqr_matmul.cc): the same B1 lane accumulators in the same order, the same lane sum, then the
// outlier residuals as a separate sparse sum. So y[t][r] does not depend on the other tokens and
// equals SpqrMatmulRows(batch = 1) bit for bit (tested in spqr_serving_test). kF16: an "fp16
// arithmetic" layer, exactly the format's FusedRowDotF16 per token (weights h(s * h(q - z)),
// explicit FMAs, outliers as fma(h(w + v) - w, x, sparse); spqr_tile_kernel_test).
#if defined(__AVX2__) && defined(__FMA__) && !defined(SPQR_FUSED_F16_SIMD)
#error "the fused SpQR tiles of fp16-arithmetic layers need F16C wherever AVX2 is used"
#endif
template <int B1, int NT, bool kPackedCodes, bool kF16>
void FusedRowTile(const PackedSpqrLayer& layer, int64_t r, const uint8_t* __restrict codes,
                  const float* __restrict scale, const float* __restrict zero,
                  const float* __restrict x, int64_t n, float* __restrict y, int64_t y_stride) {
  const int64_t groups = layer.num_groups();
  float acc[NT][B1] = {};
#if defined(__AVX2__) && defined(__FMA__)
  // Codes straight from the packed bit row (wbits <= 4, `codes` = the row's bytes with at least 3
  // readable bytes past the row): 8 codes are exactly wbits bytes, so one 32-bit load holds them
  // and a per-lane variable shift extracts them into 8 int32 lanes, with no byte buffer between.
  const int wbits = layer.wbits;
  const __m256i shifts =
      _mm256_mullo_epi32(_mm256_set1_epi32(wbits), _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7));
  const __m256i code_mask = _mm256_set1_epi32((1 << wbits) - 1);
  // The compiler does not vectorize the scalar loop below (byte -> float conversions), so the same
  // operations are spelled out 8 lanes at a time: per lane exactly one subtraction, one
  // multiplication and one fused multiply-add, as the scalar loop compiles to with FMA available
  // (the accumulation a += w * x is contracted), so the bits do not change.
  constexpr int kV = B1 / 8;
  __m256 vacc[NT][kV];
  for (int t = 0; t < NT; ++t)
    for (int v = 0; v < kV; ++v) vacc[t][v] = _mm256_setzero_ps();
  for (int64_t g = 0; g < groups; ++g) {
    const uint8_t* q = codes + g * B1;
    const __m256 s = _mm256_set1_ps(scale[g]), z = _mm256_set1_ps(zero[g]);
    __m256 w[kV];
    for (int v = 0; v < kV; ++v) {
      __m256i qi;
      if constexpr (kPackedCodes) {
        uint32_t bits;
        std::memcpy(&bits, codes + (g * (B1 / 8) + v) * wbits, sizeof(bits));
        qi = _mm256_and_si256(_mm256_srlv_epi32(_mm256_set1_epi32(static_cast<int>(bits)), shifts),
                              code_mask);
      } else {
        qi = _mm256_cvtepu8_epi32(_mm_loadl_epi64(reinterpret_cast<const __m128i*>(q + 8 * v)));
      }
      if constexpr (kF16) {
        w[v] = DequantWeightF16x8(_mm256_cvtepi32_ps(qi), s, z);
      } else {
        w[v] = _mm256_mul_ps(s, _mm256_sub_ps(_mm256_cvtepi32_ps(qi), z));
      }
    }
    for (int t = 0; t < NT; ++t) {
      const float* xg = x + t * n + g * B1;
      for (int v = 0; v < kV; ++v) {
        vacc[t][v] = _mm256_fmadd_ps(w[v], _mm256_loadu_ps(xg + 8 * v), vacc[t][v]);
      }
    }
  }
  for (int t = 0; t < NT; ++t)
    for (int v = 0; v < kV; ++v) _mm256_storeu_ps(acc[t] + 8 * v, vacc[t][v]);
#else
  for (int64_t g = 0; g < groups; ++g) {
    const uint8_t* q = codes + g * B1;
    const float s = scale[g], z = zero[g];
    float w[B1];
    if constexpr (kF16) {
      for (int k = 0; k < B1; ++k) w[k] = DequantWeightF16(q[k], s, z);
      for (int t = 0; t < NT; ++t) {
        const float* xg = x + t * n + g * B1;
        for (int k = 0; k < B1; ++k) acc[t][k] = std::fma(w[k], xg[k], acc[t][k]);
      }
      continue;
    }
    for (int k = 0; k < B1; ++k) w[k] = s * (static_cast<float>(q[k]) - z);
    for (int t = 0; t < NT; ++t) {
      const float* xg = x + t * n + g * B1;
      for (int k = 0; k < B1; ++k) acc[t][k] += w[k] * xg[k];
    }
  }
#endif
  const uint32_t o_begin = layer.outlier_row_offsets[r], o_end = layer.outlier_row_offsets[r + 1];
  for (int t = 0; t < NT; ++t) {
    float sum = 0.0f;
    for (int k = 0; k < B1; ++k) sum += acc[t][k];
    float sparse = 0.0f;  // explicit fma as in spqr_matmul.cc's FusedRowDot (same bits)
    const float* xt = x + t * n;
    for (uint32_t k = o_begin; k < o_end; ++k) {
      const uint32_t j = layer.outlier_col(k);
      float v = F16ToF32(layer.outlier_values[k]);
      if constexpr (kF16) {
        uint32_t q;
        if constexpr (kPackedCodes) {  // wbits <= 4: the code lies in two bytes of the row
          const int64_t bit = static_cast<int64_t>(j) * layer.wbits;
          const uint32_t two = codes[bit >> 3] | static_cast<uint32_t>(codes[(bit >> 3) + 1]) << 8;
          q = (two >> (bit & 7)) & ((1u << layer.wbits) - 1u);
        } else {
          q = codes[j];
        }
        v = OutlierCorrectionF16(DequantWeightF16(q, scale[j / B1], zero[j / B1]), v);
      }
      sparse = std::fma(v, xt[j], sparse);
    }
    y[t * y_stride + r] = sum + sparse;
  }
}

using FusedRowTileFn = void (*)(const PackedSpqrLayer&, int64_t, const uint8_t*, const float*,
                                const float*, const float*, int64_t, float*, int64_t);

template <int B1, bool P, bool F>
constexpr FusedRowTileFn kFusedTiles[kMaxTileTokens] = {
    FusedRowTile<B1, 1, P, F>, FusedRowTile<B1, 2, P, F>, FusedRowTile<B1, 3, P, F>,
    FusedRowTile<B1, 4, P, F>};

// Whether the tiles read codes straight from the packed row (see FusedRowTile).
bool ReadsPackedCodes(const PackedSpqrLayer& layer) {
#if defined(__AVX2__) && defined(__FMA__)
  return layer.wbits <= 4;
#else
  return false;
#endif
}

template <bool F>
const FusedRowTileFn* FusedTilesForArithmetic(const PackedSpqrLayer& layer) {
  const bool packed = ReadsPackedCodes(layer);
  switch (layer.beta1) {
    case 8:
      return packed ? kFusedTiles<8, true, F> : kFusedTiles<8, false, F>;
    case 16:
      return packed ? kFusedTiles<16, true, F> : kFusedTiles<16, false, F>;
    case 32:
      return packed ? kFusedTiles<32, true, F> : kFusedTiles<32, false, F>;
    default:
      return nullptr;  // no fused path: decode each row once, then dot (SpqrMatmulRows)
  }
}

// The layer's decode arithmetic picks the tile instances once per call (no per-weight branch).
const FusedRowTileFn* FusedTilesFor(const PackedSpqrLayer& layer) {
  return layer.fp16_arithmetic() ? FusedTilesForArithmetic<true>(layer)
                                 : FusedTilesForArithmetic<false>(layer);
}

// ConvertBlockSecondLevel with F16C where available: fp16 -> fp32 is exact, so the values are the
// same as F16ToF32's (the layer was validated to hold finite values only).
void ConvertBlockSecondLevelFast(const PackedSpqrLayer& layer, int64_t block, float* out) {
#if defined(__F16C__)
  const int64_t count = layer.num_groups() * 4;
  const uint16_t* src = layer.second_level.data() + block * count;
  int64_t i = 0;
  for (; i + 8 <= count; i += 8) {
    const __m128i h = _mm_loadu_si128(reinterpret_cast<const __m128i*>(src + i));
    _mm256_storeu_ps(out + i, _mm256_cvtph_ps(h));
  }
  for (; i < count; ++i) out[i] = F16ToF32(src[i]);
#else
  ConvertBlockSecondLevel(layer, block, out);
#endif
}

// DecodeRowStats's arithmetic (scale = s0 * (q - s1), zero = s2 * (q - s3)) with the statistic
// codes unpacked a row at a time instead of read one by one, which the compiler vectorizes.
void DecodeRowStatsFast(const PackedSpqrLayer& layer, int64_t r, const float* block_second,
                        uint8_t* code_buf, float* scale, float* zero) {
  // fp16 statistics, and the "fp16 arithmetic" variant (rounded statistics): the format's own.
  if (layer.stats_bits == kFp16Stats || layer.fp16_arithmetic()) {
    DecodeRowStats(layer, r, block_second, scale, zero);
    return;
  }
  const int64_t groups = layer.num_groups();
  const int64_t words = BitRowWords(groups, layer.stats_bits);
  uint8_t* __restrict qs = code_buf;
  uint8_t* __restrict qz = code_buf + groups;
  UnpackBitRow(layer.scale_codes.data() + r * words, groups, layer.stats_bits, qs);
  UnpackBitRow(layer.zero_codes.data() + r * words, groups, layer.stats_bits, qz);
  const float* __restrict sl = block_second;
  for (int64_t g = 0; g < groups; ++g) {
    scale[g] = sl[g * 4] * (static_cast<float>(qs[g]) - sl[g * 4 + 1]);
    zero[g] = sl[g * 4 + 2] * (static_cast<float>(qz[g]) - sl[g * 4 + 3]);
  }
}

// Per-thread decode state, reused across calls.
struct RowDecodeScratch {
  std::vector<float> second, scale, zero, row;
  std::vector<uint8_t> codes, stat_codes;
  void Reserve(const PackedSpqrLayer& layer) {
    const size_t groups = static_cast<size_t>(layer.num_groups());
    const size_t n = static_cast<size_t>(layer.in_features);
    if (second.size() < groups * 4) second.resize(groups * 4);
    if (scale.size() < groups) scale.resize(groups);
    if (zero.size() < groups) zero.resize(groups);
    if (row.size() < n) row.resize(n);
    if (codes.size() < n + 8) codes.resize(n + 8);  // + room for a padded packed row copy
    if (stat_codes.size() < 2 * groups) stat_codes.resize(2 * groups);
  }
};

// Rows [r0, r1) of the fused path for all tokens.
void FusedRows(const PackedSpqrLayer& layer, const FusedRowTileFn* tiles, const float* x_perm,
               int64_t num_tokens, float* y, int64_t r0, int64_t r1, RowDecodeScratch* scratch) {
  const int64_t n = layer.in_features;
  const bool bilevel = layer.stats_bits != kFp16Stats;
  const int64_t words_per_row = BitRowWords(n, layer.wbits);
  const bool packed_codes = ReadsPackedCodes(layer);
  int64_t cached_block = -1;
  for (int64_t r = r0; r < r1; ++r) {
    // Second-level values are shared by beta2 consecutive rows: convert them once per block.
    if (bilevel && r / layer.beta2 != cached_block) {
      cached_block = r / layer.beta2;
      ConvertBlockSecondLevelFast(layer, cached_block, scratch->second.data());
    }
    DecodeRowStatsFast(layer, r, scratch->second.data(), scratch->stat_codes.data(),
                       scratch->scale.data(), scratch->zero.data());
    const uint32_t* row_words = layer.weight_codes.data() + r * words_per_row;
    const uint8_t* codes = scratch->codes.data();
    if (packed_codes) {
      if (r + 1 < layer.out_features) {
        // The next row's words follow, so the tile's 4-byte loads past this row stay in bounds.
        codes = reinterpret_cast<const uint8_t*>(row_words);
      } else {
        std::memcpy(scratch->codes.data(), row_words, words_per_row * sizeof(uint32_t));
        std::memset(scratch->codes.data() + words_per_row * sizeof(uint32_t), 0, 4);
      }
    } else {
      UnpackBitRow(row_words, n, layer.wbits, scratch->codes.data());
    }
    for (int64_t t0 = 0; t0 < num_tokens; t0 += kMaxTileTokens) {
      const int nt = static_cast<int>(std::min<int64_t>(kMaxTileTokens, num_tokens - t0));
      tiles[nt - 1](layer, r, codes, scratch->scale.data(), scratch->zero.data(), x_perm + t0 * n,
                    n, y + t0 * layer.out_features, layer.out_features);
    }
  }
}

}  // namespace

void SpqrLinear(const LinearTensors& layer, const PackedActivations& x, float* y, int num_threads) {
  const PackedSpqrLayer& packed = *layer.spqr;
  const int64_t m = packed.out_features;
  const int64_t n = packed.in_features;
  const int64_t num_tokens = x.num_tokens;
  if (num_tokens == 0) return;

  // x_perm[t][j] = x[t][perm[j]]: the permutation is fused into this one gather per token.
  thread_local std::vector<float> x_perm;
  x_perm.resize(static_cast<size_t>(num_tokens * n));
  for (int64_t t = 0; t < num_tokens; ++t) {
    GatherPermutedInputs(packed, x.data.data() + t * x.stride, 1, x_perm.data() + t * n);
  }

  const int64_t beta2 = packed.stats_bits == kFp16Stats ? 1 : std::max(1, packed.beta2);
  const int64_t rows_per_item = (kRowsPerItem + beta2 - 1) / beta2 * beta2;
  const int64_t items = (m + rows_per_item - 1) / rows_per_item;
  const FusedRowTileFn* tiles = FusedTilesFor(packed);
  const float* xp = x_perm.data();
  std::atomic<int64_t> next{0};
  ParallelRun(static_cast<int>(std::clamp<int64_t>(num_threads, 1, items)), [&](int, int) {
    thread_local RowDecodeScratch scratch;
    scratch.Reserve(packed);
    for (int64_t item = next.fetch_add(1, std::memory_order_relaxed); item < items;
         item = next.fetch_add(1, std::memory_order_relaxed)) {
      const int64_t r0 = item * rows_per_item;
      const int64_t r1 = std::min(m, r0 + rows_per_item);
      if (tiles != nullptr) {
        FusedRows(packed, tiles, xp, num_tokens, y, r0, r1, &scratch);
      } else {
        // Decode-then-dot: the row is decoded once for all tokens and every token's dot product
        // is the same whatever the batch, so this path is batch independent too.
        SpqrMatmulRows(packed, xp, num_tokens, y, m, r0, r1, scratch.row.data());
      }
    }
  });

  AddBias(layer, num_tokens, y);
}

void SpqrLinearTiled(const SpqrTileLayout& tiles, const LinearTensors& layer,
                     const PackedActivations& x, float* y, int num_threads, TileIsa isa) {
  const PackedSpqrLayer& packed = *tiles.source;
  const int64_t m = packed.out_features, n = packed.in_features, num_tokens = x.num_tokens;
  if (num_tokens == 0) return;
  thread_local std::vector<float> x_perm_buffer;
  thread_local Int8Activations xq_buffer;
  // The lambdas below run on pool threads, where the thread_local names mean other objects.
  x_perm_buffer.resize(static_cast<size_t>(num_tokens * n));
  float* xp = x_perm_buffer.data();
  Int8Activations* q = &xq_buffer;
  PrepareInt8Activations(num_tokens, n, tiles.unit_cols, q);
  const auto prepare = [&](int64_t t0, int64_t t1) {
    for (int64_t t = t0; t < t1; ++t) {
      GatherPermutedInputs(packed, x.data.data() + t * x.stride, 1, xp + t * n);
    }
    QuantizeActivationTokens(xp, t0, t1, q);
  };
  // A batch's inputs are permuted and quantized in parallel too (by blocks of kTokenBlock tokens,
  // so threads write disjoint memory): serially they were ~8 % of a 16-stream server's time.
  constexpr int64_t kBlock = Int8Activations::kTokenBlock;
  const int64_t blocks = (num_tokens + kBlock - 1) / kBlock;
  if (blocks > 1 && num_threads > 1) {
    ParallelForStatic(num_threads, blocks, [&](int64_t b0, int64_t b1) {
      prepare(b0 * kBlock, std::min(b1 * kBlock, num_tokens));
    });
  } else {
    prepare(0, num_tokens);
  }
  const int64_t row_tiles = tiles.row_tiles;
  const int threads = static_cast<int>(std::min<int64_t>(num_threads, row_tiles));
  ParallelForStatic(threads, row_tiles, [&](int64_t begin, int64_t end) {
    SpqrTileMatmulInt8(tiles, *q, xp, begin, end, y, m, isa);
  });
  AddBias(layer, num_tokens, y);
}

int64_t SpqrLinearBytes(const LinearTensors& layer) {
  if (layer.spqr == nullptr) return 0;
  return SpqrLayerPayloadBytes(*layer.spqr) +
         static_cast<int64_t>(layer.bias ? layer.bias->nbytes : 0);
}

}  // namespace spqr::cpu
