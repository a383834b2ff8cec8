// Random packed SpQR layers for the GPU decoder/kernel tests: every array filled with random but
// valid content (codes, bilevel or fp16 statistics, CSR outliers, a shuffled permutation), so the
// device decode is checked on arbitrary bits rather than only on what the quantizer happens to
// emit.
#pragma once

#include <algorithm>
#include <cstdint>
#include <numeric>
#include <ostream>
#include <random>
#include <vector>

#include "engine/format/bit_packing.h"
#include "engine/format/spqr_layer.h"
#include "engine/util/half.h"

namespace spqr::testing {

struct RandomLayerSpec {
  int64_t m, n;
  int wbits, beta1, beta2, stats_bits;
  double outlier_fraction;
  bool fp16_arithmetic = false;  // the format's "fp16 arithmetic" decode variant
};

// Names the case in test listings (found by argument-dependent lookup).
inline void PrintTo(const RandomLayerSpec& s, std::ostream* os) {
  *os << "m" << s.m << "_n" << s.n << "_w" << s.wbits << "_b" << s.beta1 << "x" << s.beta2 << "_s"
      << s.stats_bits << "_o" << static_cast<int>(s.outlier_fraction * 1000) << "pm"
      << (s.fp16_arithmetic ? "_fp16arith" : "");
}

inline std::vector<uint32_t> RandomBitRows(int64_t rows, int64_t cols, int bits,
                                           std::mt19937& rng) {
  std::uniform_int_distribution<int> code(0, (1 << bits) - 1);
  std::vector<uint8_t> codes(rows * cols);
  for (uint8_t& c : codes) c = static_cast<uint8_t>(code(rng));
  return PackBitRows(codes.data(), rows, cols, bits);
}

inline PackedSpqrLayer RandomSpqrLayer(const RandomLayerSpec& spec, std::mt19937& rng) {
  PackedSpqrLayer l;
  l.out_features = spec.m;
  l.in_features = spec.n;
  l.wbits = spec.wbits;
  l.beta1 = spec.beta1;
  l.beta2 = spec.beta2;
  l.stats_bits = spec.stats_bits;
  if (spec.fp16_arithmetic) l.decode_arithmetic = SpqrDecodeArithmetic::kFp16;
  const int64_t groups = spec.n / spec.beta1;
  std::uniform_real_distribution<float> unit(0.0f, 1.0f);
  l.weight_codes = RandomBitRows(spec.m, spec.n, spec.wbits, rng);
  if (spec.stats_bits == kFp16Stats) {
    for (int64_t i = 0; i < spec.m * groups; ++i) {
      l.scale_f16.push_back(F32ToF16(0.001f + 0.02f * unit(rng)));
      l.zero_f16.push_back(F32ToF16(unit(rng) * static_cast<float>((1 << spec.wbits) - 1)));
    }
  } else {
    l.scale_codes = RandomBitRows(spec.m, groups, spec.stats_bits, rng);
    l.zero_codes = RandomBitRows(spec.m, groups, spec.stats_bits, rng);
    for (int64_t i = 0; i < l.num_row_blocks() * groups; ++i) {
      l.second_level.push_back(F32ToF16(0.0005f + 0.002f * unit(rng)));  // scale of scales
      l.second_level.push_back(F32ToF16(-2.0f * unit(rng)));             // zero of scales
      l.second_level.push_back(F32ToF16(0.1f + 0.5f * unit(rng)));       // scale of zeros
      l.second_level.push_back(F32ToF16(-unit(rng)));                    // zero of zeros
    }
  }
  std::bernoulli_distribution is_outlier(spec.outlier_fraction);
  std::normal_distribution<float> residual(0.0f, 0.05f);
  l.outlier_row_offsets.push_back(0);
  for (int64_t r = 0; r < spec.m; ++r) {
    for (int64_t j = 0; j < spec.n; ++j) {
      if (!is_outlier(rng)) continue;
      if (l.wide_column_ids()) {
        l.outlier_cols_u32.push_back(static_cast<uint32_t>(j));
      } else {
        l.outlier_cols_u16.push_back(static_cast<uint16_t>(j));
      }
      l.outlier_values.push_back(F32ToF16(residual(rng)));
    }
    l.outlier_row_offsets.push_back(static_cast<uint32_t>(l.outlier_values.size()));
  }
  l.perm.resize(spec.n);
  std::iota(l.perm.begin(), l.perm.end(), 0u);
  std::shuffle(l.perm.begin(), l.perm.end(), rng);
  return l;
}

}  // namespace spqr::testing
