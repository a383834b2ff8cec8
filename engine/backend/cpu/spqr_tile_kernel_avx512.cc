// AVX-512 VNNI implementation of SpqrTileMatmulInt8 (arithmetic: spqr_tile_kernel.h). Compiled
// for that instruction set through a target pragma whatever the build's -march, and called only
// after a CPUID check, so a portable build runs it where the machine has it.
//
// Per row tile (16 rows = 16 int32 lanes) and block of up to 8 tokens, each column tile's codes
// are unpacked once into four 64-byte chunks (a shift and a mask per chunk, plus a mask-register
// add of the third bit for 3-bit codes) and feed VPDPBUSD for every token of the block; scale and
// zero of the 16 rows are decoded once per group (one VPMULTISHIFTQB for codes of up to 4 bits,
// VPERMB + VPSRLVD for wider ones). Each weight is read from memory and decoded once per call: a
// call of more than 8 tokens keeps the row tile's decoded chunks and statistics in a per-thread
// scratch for its later token blocks. The row tile's outliers follow, a step at a time (VPEXPANDW
// of the step's entries into their rows' lanes, one gather, one masked FMA per token), or for
// blocks of 4+ tokens with the tokens in the lanes (FinishRowsTokenVectors).
// Instruction sets: AVX-512 F/BW/VL/DQ, VNNI, VBMI (VPERMB, VPMULTISHIFTQB), VBMI2 (VPEXPANDW),
// F16C.
#include <immintrin.h>

#include <algorithm>
#include <array>
#include <cstdint>
#include <cstring>
#include <limits>
#include <utility>

#include "engine/backend/cpu/spqr_tile_kernel.h"

#pragma GCC push_options
#pragma GCC target( \
    "avx512f,avx512bw,avx512vl,avx512dq,avx512vnni,avx512vbmi,avx512vbmi2,fma,f16c,popcnt")

namespace spqr::cpu::internal {
namespace {

constexpr int kMaxTokens = Int8Activations::kTokenBlock;  // so token blocks line up
// How far ahead of the current tile the codes are prefetched.
constexpr int kPrefetchBytes = 2048;

// Turns a 16 x b-bit little-endian stream into 16 int32 lanes. Up to 4 bits (the whole stream in
// one 64-bit word): the word broadcast, VPMULTISHIFTQB moving lane i's bits [i*b, i*b + 8) into its
// low byte, and a mask. Wider: VPERMB of each lane's 4 bytes, a variable shift, a mask.
struct StreamUnpacker {
  __m512i index, shift, mask;
  bool one_word;
  explicit StreamUnpacker(int bits) : one_word(16 * bits <= 64) {
    alignas(64) uint8_t idx[64] = {};
    alignas(64) int32_t sh[16];
    for (int i = 0; i < 16; ++i) {
      const int first = (i * bits) / 8;
      if (one_word) {
        // Byte 0 of lane i (byte 4 * (i % 2) of 64-bit word i / 2): bits from i * b on.
        idx[4 * i] = static_cast<uint8_t>(i * bits);
      } else {
        for (int k = 0; k < 4; ++k) idx[4 * i + k] = static_cast<uint8_t>(first + k);
      }
      sh[i] = (i * bits) % 8;
    }
    index = _mm512_load_si512(idx);
    shift = _mm512_load_si512(sh);
    mask = _mm512_set1_epi32((1 << bits) - 1);
  }
  // Bytes [p, p + 16) may be read (bytes past the stream only land in masked-off bits).
  __m512 Codes(const uint8_t* p) const {
    __m512i v;
    if (one_word) {
      uint64_t word;
      std::memcpy(&word, p, sizeof(word));
      v = _mm512_multishift_epi64_epi8(index, _mm512_set1_epi64(static_cast<int64_t>(word)));
    } else {
      const __m512i src =
          _mm512_zextsi128_si512(_mm_loadu_si128(reinterpret_cast<const __m128i*>(p)));
      v = _mm512_srlv_epi32(_mm512_permutexvar_epi8(index, src), shift);
    }
    return _mm512_cvtepi32_ps(_mm512_and_si512(v, mask));
  }
};

// 16 floats rounded to fp16 and back (RoundToF16, engine/util/half.h).
inline __m512 RoundToF16x16(__m512 v) {
  return _mm512_cvtph_ps(_mm512_cvtps_ph(v, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC));
}

// Scale and zero vectors of one (tile, group): the format's s0 * (code - s1), s2 * (code - s3),
// each step rounded to fp16 for an "fp16 arithmetic" layer. p: the group's statistics in the
// layout; second: its four second-level values (unused for fp16 statistics).
template <bool kFp16Stats>
inline void GroupStats16(const SpqrTileLayout& l, const StreamUnpacker& un, const uint8_t* p,
                         const uint16_t* second, __m512* s, __m512* z) {
  _mm_prefetch(reinterpret_cast<const char*>(p + kPrefetchBytes / 4), _MM_HINT_T0);
  if constexpr (kFp16Stats) {
    *s = _mm512_cvtph_ps(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(p)));
    *z = _mm512_cvtph_ps(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(p + 32)));
  } else {
    // The four second-level values in one conversion, then one permute per broadcast.
    _mm_prefetch(reinterpret_cast<const char*>(second + kPrefetchBytes / 8), _MM_HINT_T0);
    const __m512 sl = _mm512_castps128_ps512(
        _mm_cvtph_ps(_mm_loadl_epi64(reinterpret_cast<const __m128i*>(second))));
    const int b = l.stats_bits;
    const __m512 ts = _mm512_sub_ps(un.Codes(p), _mm512_permutexvar_ps(_mm512_set1_epi32(1), sl));
    const __m512 tz =
        _mm512_sub_ps(un.Codes(p + 2 * b), _mm512_permutexvar_ps(_mm512_set1_epi32(3), sl));
    const __m512 ss = _mm512_permutexvar_ps(_mm512_set1_epi32(0), sl);
    const __m512 sz = _mm512_permutexvar_ps(_mm512_set1_epi32(2), sl);
    if (l.fp16_arithmetic) {  // once per (tile, group), the same for the whole layer
      *s = RoundToF16x16(_mm512_mul_ps(ss, RoundToF16x16(ts)));
      *z = RoundToF16x16(_mm512_mul_ps(sz, RoundToF16x16(tz)));
    } else {
      *s = _mm512_mul_ps(ss, ts);
      *z = _mm512_mul_ps(sz, tz);
    }
  }
}

// The four code chunks of one tile as u8 lanes.
template <int kBits>
inline void UnpackTile(const uint8_t* t, __m512i* ch) {
  if constexpr (kBits == 4) {
    const __m512i m = _mm512_set1_epi8(0x0f);
    const __m512i v0 = _mm512_loadu_si512(t), v1 = _mm512_loadu_si512(t + 64);
    ch[0] = _mm512_and_si512(v0, m);
    ch[1] = _mm512_and_si512(_mm512_srli_epi16(v0, 4), m);
    ch[2] = _mm512_and_si512(v1, m);
    ch[3] = _mm512_and_si512(_mm512_srli_epi16(v1, 4), m);
  } else {
    const __m512i m = _mm512_set1_epi8(0x03);
    const __m512i v = _mm512_loadu_si512(t);
    ch[0] = _mm512_and_si512(v, m);
    ch[1] = _mm512_and_si512(_mm512_srli_epi16(v, 2), m);
    ch[2] = _mm512_and_si512(_mm512_srli_epi16(v, 4), m);
    ch[3] = _mm512_and_si512(_mm512_srli_epi16(v, 6), m);
    if constexpr (kBits == 3) {
      const __m512i four = _mm512_set1_epi8(4);
      for (int c = 0; c < 4; ++c) {
        uint64_t bits;
        std::memcpy(&bits, t + 64 + 8 * c, sizeof(bits));
        ch[c] = _mm512_mask_add_epi8(ch[c], _cvtu64_mask64(bits), ch[c], four);
      }
    }
  }
}

// FinishRows (spqr_tile_kernel.h) a step at a time: the step's entries are expanded into the
// lanes of their rows, the inputs gathered, and one masked FMA per token extends the 16 rows'
// chains, which are the dense accumulators themselves (so each row's order is the reference's).
template <int NT>
void FinishRowsSteps(const SpqrTileLayout& l, int64_t tile, __m512* acc, const float* x_perm,
                     float* y, int64_t y_stride) {
  const int64_t n = l.in_features;
  const uint16_t* masks = l.outlier_step_masks.data();
  const uint16_t* values = l.outlier_values.data();
  const uint16_t* cols16 = l.outlier_cols_u16.data();
  const uint32_t* cols32 = l.outlier_cols_u32.data();
  const bool wide = l.wide_outlier_cols;
  const uint32_t step_end = l.outlier_tile_steps[tile + 1];
  uint32_t e = l.outlier_tile_entries[tile];
  for (uint32_t s = l.outlier_tile_steps[tile]; s < step_end; ++s) {
    const __mmask16 m = masks[s];
    // 16 entries read from e on (the arrays end in 16 elements of slack), the first popcount(m)
    // spread into the lanes of m.
    const __m512 v = _mm512_cvtph_ps(_mm256_maskz_expand_epi16(
        m, _mm256_loadu_si256(reinterpret_cast<const __m256i*>(values + e))));
    const __m512i cols =
        wide ? _mm512_maskz_expand_epi32(m, _mm512_loadu_si512(cols32 + e))
             : _mm512_cvtepu16_epi32(_mm256_maskz_expand_epi16(
                   m, _mm256_loadu_si256(reinterpret_cast<const __m256i*>(cols16 + e))));
    for (int t = 0; t < NT; ++t) {
      const __m512 x = _mm512_mask_i32gather_ps(_mm512_setzero_ps(), m, cols, x_perm + t * n, 4);
      acc[t] = _mm512_mask3_fmadd_ps(v, x, acc[t], m);
    }
    e += static_cast<uint32_t>(__builtin_popcount(m));
  }
  const int64_t r0 = tile * kTileRows;
  const int rows = static_cast<int>(std::min<int64_t>(kTileRows, l.out_features - r0));
  const __mmask16 valid = static_cast<__mmask16>((1u << rows) - 1);
  for (int t = 0; t < NT; ++t) _mm512_mask_storeu_ps(y + t * y_stride + r0, valid, acc[t]);
}

// FinishRows for a block of 4..8 tokens with the tokens in the vector lanes instead of the rows:
// the 16 rows' accumulators are transposed to one 8-token vector per row, and each outlier costs
// one broadcast and one FMA with its column's inputs for all tokens (x_blocks), where the steps'
// gathers cost a gathered element per token. Each (row, token) chain sees the same FMAs in the same
// order (the row's outliers in CSR order), so the bits are FinishRowsSteps'.
template <int NT>
void FinishRowsTokenVectors(const SpqrTileLayout& l, int64_t tile, const __m512* acc,
                            const float* x_block, float* y, int64_t y_stride) {
  constexpr int kBlock = Int8Activations::kTokenBlock;
  static_assert(NT <= kBlock);
  const int64_t r0 = tile * kTileRows;
  const int rows = static_cast<int>(std::min<int64_t>(kTileRows, l.out_features - r0));
  if (l.outlier_tile_steps[tile] == l.outlier_tile_steps[tile + 1]) {  // no outliers: no transpose
    const __mmask16 valid = static_cast<__mmask16>((1u << rows) - 1);
    for (int t = 0; t < NT; ++t) _mm512_mask_storeu_ps(y + t * y_stride + r0, valid, acc[t]);
    return;
  }
  alignas(64) float by_token[kBlock][kTileRows];
  for (int t = 0; t < NT; ++t) _mm512_store_ps(by_token[t], acc[t]);
  alignas(32) float by_row[kTileRows][kBlock] = {};
  for (int i = 0; i < kTileRows; ++i) {
    for (int t = 0; t < NT; ++t) by_row[i][t] = by_token[t][i];
  }
  const uint16_t* masks = l.outlier_step_masks.data();
  const uint16_t* values = l.outlier_values.data();
  uint32_t e = l.outlier_tile_entries[tile];
  const uint32_t step_end = l.outlier_tile_steps[tile + 1];
  for (uint32_t s = l.outlier_tile_steps[tile]; s < step_end; ++s) {
    for (uint32_t m = masks[s]; m != 0; m &= m - 1, ++e) {
      float* row = by_row[__builtin_ctz(m)];
      const __m256 v = _mm256_set1_ps(_cvtsh_ss(values[e]));  // F16C: in this target region
      const __m256 x = _mm256_loadu_ps(x_block + static_cast<int64_t>(l.outlier_col(e)) * kBlock);
      _mm256_store_ps(row, _mm256_fmadd_ps(v, x, _mm256_load_ps(row)));
    }
  }
  for (int t = 0; t < NT; ++t) {
    for (int i = 0; i < rows; ++i) y[t * y_stride + r0 + i] = by_row[i][t];
  }
}

inline __m512i Broadcast4(const int8_t* p) {
  int32_t v;
  std::memcpy(&v, p, sizeof(v));
  return _mm512_set1_epi32(v);
}

// How a TileTokens call gets the row tile's unpacked codes and group statistics: decoded from the
// layout (kDecode), decoded and also kept in the thread's scratch (kDecodeKeep: the first token
// block of a call with more), or read back from that scratch (kReuse: the call's later blocks, so
// a prefill decodes each weight once per call instead of once per 8 tokens).
enum class Pass { kDecode, kDecodeKeep, kReuse };

// One row tile's decoded codes ([col_tiles][4] chunks) and statistics ([groups][s, z]).
struct TileScratch {
  __m512i* codes = nullptr;
  __m512* stats = nullptr;
};

// One row tile, tokens [t0, t0 + NT). kUnit: columns per activation unit (16, or 8 for beta1 8).
template <int kBits, int kUnit, bool kFp16Stats, Pass kPass, int NT>
void TileTokens(const SpqrTileLayout& l, const StreamUnpacker& un, const Int8Activations& xq,
                const float* x_perm, int64_t tile, int64_t t0, float* y, int64_t y_stride,
                const TileScratch& scratch) {
  constexpr int kUnitsPerTile = 16 / kUnit;
  constexpr int kChunksPerUnit = kUnit / 4;
  const int64_t n = l.in_features, units = l.units();
  __m512 acc[NT];
  for (int t = 0; t < NT; ++t) acc[t] = _mm512_setzero_ps();
  __m512 s = _mm512_setzero_ps(), z = _mm512_setzero_ps();
  // The statistics walk forward a group at a time (pointers, not per-unit index arithmetic: the
  // divisions by beta1 and beta2 were a tenth of the loop's time).
  const uint8_t* stats = l.group_stats(tile, 0);
  const uint16_t* second = kFp16Stats ? nullptr : l.second_level(tile, 0);
  const int64_t stat_bytes = l.group_stat_bytes;
  const int units_per_group = l.beta1 / kUnit;
  int group_left = 0;  // units left in the current group
  __m512i* kept_codes = scratch.codes;
  __m512* kept_stats = scratch.stats;
  const int8_t* xbase = xq.q.data() + t0 * n;
  const float* dbase = xq.scale.data() + t0 * units;
  const float* sbase = xq.sum.data() + t0 * units;
  for (int64_t ct = 0; ct < l.col_tiles; ++ct) {
    __m512i ch[4];
    if constexpr (kPass == Pass::kReuse) {
      for (int c = 0; c < 4; ++c) ch[c] = _mm512_load_si512(kept_codes + c);
    } else {
      const uint8_t* codes = l.tile_codes(tile, ct);
      // The weights stream from memory once per call (decode reads each byte once), faster than
      // the hardware prefetcher ramps up over a 16-row tile: fetch a few tiles ahead.
      _mm_prefetch(reinterpret_cast<const char*>(codes + kPrefetchBytes), _MM_HINT_T0);
      if constexpr (kBits > 2) {
        _mm_prefetch(reinterpret_cast<const char*>(codes + kPrefetchBytes + 64), _MM_HINT_T0);
      }
      UnpackTile<kBits>(codes, ch);
      if constexpr (kPass == Pass::kDecodeKeep) {
        for (int c = 0; c < 4; ++c) _mm512_store_si512(kept_codes + c, ch[c]);
      }
    }
    kept_codes += 4;
    for (int ui = 0; ui < kUnitsPerTile; ++ui) {
      const int64_t u = ct * kUnitsPerTile + ui;
      if (group_left == 0) {
        if constexpr (kPass == Pass::kReuse) {
          s = _mm512_load_ps(kept_stats);
          z = _mm512_load_ps(kept_stats + 1);
        } else {
          GroupStats16<kFp16Stats>(l, un, stats, second, &s, &z);
          stats += stat_bytes;
          if constexpr (!kFp16Stats) second += 4;
          if constexpr (kPass == Pass::kDecodeKeep) {
            _mm512_store_ps(kept_stats, s);
            _mm512_store_ps(kept_stats + 1, z);
          }
        }
        kept_stats += 2;
        group_left = units_per_group;
      }
      --group_left;
      for (int t = 0; t < NT; ++t) {
        const int8_t* xu = xbase + t * n + u * kUnit;
        // Two independent dot-product chains halve the VPDPBUSD latency on the critical path
        // (integer sums: the order does not change the result).
        const __m512i* chu = ch + ui * kChunksPerUnit;
        __m512i idot = _mm512_dpbusd_epi32(_mm512_setzero_si512(), chu[0], Broadcast4(xu));
        __m512i idot2 = _mm512_dpbusd_epi32(_mm512_setzero_si512(), chu[1], Broadcast4(xu + 4));
        if constexpr (kChunksPerUnit == 4) {
          idot = _mm512_dpbusd_epi32(idot, chu[2], Broadcast4(xu + 8));
          idot2 = _mm512_dpbusd_epi32(idot2, chu[3], Broadcast4(xu + 12));
        }
        idot = _mm512_add_epi32(idot, idot2);
        const __m512 p =
            _mm512_mul_ps(_mm512_cvtepi32_ps(idot), _mm512_set1_ps(dbase[t * units + u]));
        const __m512 v = _mm512_fnmadd_ps(z, _mm512_set1_ps(sbase[t * units + u]), p);
        acc[t] = _mm512_fmadd_ps(s, v, acc[t]);
      }
    }
  }
  if constexpr (NT >= Int8Activations::kMinVectorTokens) {  // x_blocks is filled
    FinishRowsTokenVectors<NT>(
        l, tile, acc,
        xq.x_blocks.data() + t0 / Int8Activations::kTokenBlock * n * Int8Activations::kTokenBlock,
        y + t0 * y_stride, y_stride);
  } else {
    FinishRowsSteps<NT>(l, tile, acc, x_perm + t0 * n, y + t0 * y_stride, y_stride);
  }
}

using TileFn = void (*)(const SpqrTileLayout&, const StreamUnpacker&, const Int8Activations&,
                        const float*, int64_t, int64_t, float*, int64_t, const TileScratch&);

// The implementations for one layer configuration: blocks of 1..8 tokens decoding the weights,
// the first block of a longer call (always 8 tokens) keeping them, and the later blocks.
struct TileFns {
  std::array<TileFn, kMaxTokens> decode;
  TileFn decode_keep;
  std::array<TileFn, kMaxTokens> reuse;
};

// TileTokens for blocks of 1..kMaxTokens tokens.
template <int kBits, int kUnit, bool kFp16Stats, Pass kPass, size_t... I>
constexpr std::array<TileFn, kMaxTokens> BlockFns(std::index_sequence<I...>) {
  return {TileTokens<kBits, kUnit, kFp16Stats, kPass, static_cast<int>(I) + 1>...};
}

template <int kBits, int kUnit, bool kFp16Stats>
constexpr TileFns kTileFns = {
    BlockFns<kBits, kUnit, kFp16Stats, Pass::kDecode>(std::make_index_sequence<kMaxTokens>{}),
    TileTokens<kBits, kUnit, kFp16Stats, Pass::kDecodeKeep, kMaxTokens>,
    BlockFns<kBits, kUnit, kFp16Stats, Pass::kReuse>(std::make_index_sequence<kMaxTokens>{})};

template <int kBits, int kUnit>
const TileFns& FnsForStats(bool fp16) {
  return fp16 ? kTileFns<kBits, kUnit, true> : kTileFns<kBits, kUnit, false>;
}

template <int kBits>
const TileFns& FnsForUnit(int unit, bool fp16) {
  return unit == 8 ? FnsForStats<kBits, 8>(fp16) : FnsForStats<kBits, 16>(fp16);
}

}  // namespace

void QuantizeTokenAvx512(const float* x, int64_t n, int unit_cols, int8_t* q, float* scale,
                         float* sum) {
  const __mmask16 lanes = unit_cols == 16 ? 0xffff : 0x00ff;
  const __m512 abs_mask = _mm512_castsi512_ps(_mm512_set1_epi32(0x7fffffff));
  const int64_t units = n / unit_cols;
  // 16 units at a time: their maxima first, so that the two divisions per unit are two vector
  // divisions per 16 units (the same IEEE quotients).
  for (int64_t u0 = 0; u0 < units; u0 += 16) {
    const int count = static_cast<int>(std::min<int64_t>(16, units - u0));
    alignas(64) float amax[16] = {}, inv[16], d[16];
    for (int i = 0; i < count; ++i) {
      const __m512 v = _mm512_maskz_loadu_ps(lanes, x + (u0 + i) * unit_cols);
      // MAXPS returns its second operand when the first is NaN, so a NaN input is skipped as
      // std::max(amax, NaN) skips it in the scalar reference.
      amax[i] =
          _mm512_reduce_max_ps(_mm512_max_ps(_mm512_and_ps(v, abs_mask), _mm512_setzero_ps()));
    }
    const __m512 vmax = _mm512_load_ps(amax), c127 = _mm512_set1_ps(127.0f);
    _mm512_store_ps(inv, _mm512_div_ps(c127, vmax));
    _mm512_store_ps(d, _mm512_div_ps(vmax, c127));
    for (int i = 0; i < count; ++i) {
      const int64_t u = u0 + i;
      const float* xu = x + u * unit_cols;
      if (!(amax[i] > 0.0f && amax[i] <= std::numeric_limits<float>::max())) {  // zero or inf
        QuantizeUnitScalar(xu, unit_cols, q + u * unit_cols, scale + u, sum + u);
        continue;
      }
      const __m512 v = _mm512_maskz_loadu_ps(lanes, xu);
      __m512 r = _mm512_roundscale_ps(_mm512_mul_ps(v, _mm512_set1_ps(inv[i])),
                                      _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
      // max(NaN, -127) is -127 and min(r, 127) then r: the scalar clamp's results.
      r = _mm512_min_ps(_mm512_max_ps(r, _mm512_set1_ps(-127.0f)), c127);
      const __m512i qi = _mm512_cvtps_epi32(r);  // integral already: exact
      _mm_mask_storeu_epi8(q + u * unit_cols, lanes, _mm512_cvtepi32_epi8(qi));
      scale[u] = d[i];
      sum[u] = d[i] * static_cast<float>(_mm512_reduce_add_epi32(qi));  // masked-off lanes: 0
    }
  }
}

void SpqrTileMatmulInt8Avx512(const SpqrTileLayout& l, const Int8Activations& xq,
                              const float* x_perm, int64_t tile_begin, int64_t tile_end, float* y,
                              int64_t y_stride) {
  const bool fp16 = l.stats_bits == kFp16Stats;
  const TileFns& fns = l.wbits == 4   ? FnsForUnit<4>(l.unit_cols, fp16)
                       : l.wbits == 3 ? FnsForUnit<3>(l.unit_cols, fp16)
                                      : FnsForUnit<2>(l.unit_cols, fp16);
  const StreamUnpacker un(fp16 ? 8 : l.stats_bits);
  if (xq.tokens <= kMaxTokens) {
    for (int64_t tile = tile_begin; tile < tile_end; ++tile) {
      fns.decode[xq.tokens - 1](l, un, xq, x_perm, tile, 0, y, y_stride, TileScratch{});
    }
    return;
  }
  // One row tile decoded (~48 KB at 2048 columns, ~140 KB at 5632: the thread's L2 holds it).
  thread_local AlignedBytes kept;
  const size_t code_bytes = static_cast<size_t>(4 * l.col_tiles) * sizeof(__m512i);
  const size_t need = code_bytes + static_cast<size_t>(2 * l.groups) * sizeof(__m512);
  if (kept.size() < need) kept = AlignedBytes(need);
  const TileScratch scratch{reinterpret_cast<__m512i*>(kept.data()),
                            reinterpret_cast<__m512*>(kept.data() + code_bytes)};
  for (int64_t tile = tile_begin; tile < tile_end; ++tile) {
    fns.decode_keep(l, un, xq, x_perm, tile, 0, y, y_stride, scratch);
    for (int64_t t0 = kMaxTokens; t0 < xq.tokens; t0 += kMaxTokens) {
      const int64_t nt = xq.tokens - t0 < kMaxTokens ? xq.tokens - t0 : kMaxTokens;
      fns.reuse[nt - 1](l, un, xq, x_perm, tile, t0, y, y_stride, scratch);
    }
  }
}

}  // namespace spqr::cpu::internal

#pragma GCC pop_options
