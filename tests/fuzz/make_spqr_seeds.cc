// Writes the seed corpus of spqr_format_fuzz: small valid SpQR layers (random codes, statistics
// and outliers from a fixed seed) as safetensors files, covering both statistics kinds, 2..8-bit
// weights, a short last row block, rows with and without outliers, two layers in one file, and
// the stored-CRC-0 convention of the fuzz target (see spqr_format_fuzz.cc).
//
// Usage: make_spqr_seeds OUT_DIR   (the committed seeds are tests/fuzz/corpus/spqr_format; the
// fuzz build compiles this tool, so `build-fuzz/tests/make_spqr_seeds
// tests/fuzz/corpus/spqr_format` regenerates them).
#include <algorithm>
#include <cstdint>
#include <cstdio>
#include <random>
#include <string>
#include <vector>

#include "engine/format/bit_packing.h"
#include "engine/format/spqr_layer.h"
#include "engine/format/spqr_tensors.h"
#include "engine/util/half.h"
#include "quantizer/safetensors_writer.h"

namespace spqr {
namespace {

struct SeedLayer {
  int64_t m, n;
  int wbits, beta1, beta2, stats_bits;
  int outliers_per_row;  // on every other row
};

PackedSpqrLayer MakeLayer(const SeedLayer& s, uint32_t seed) {
  std::mt19937 rng(seed);
  PackedSpqrLayer l;
  l.out_features = s.m;
  l.in_features = s.n;
  l.wbits = s.wbits;
  l.beta1 = s.beta1;
  l.beta2 = s.beta2;
  l.stats_bits = s.stats_bits;
  auto codes = [&](int64_t rows, int64_t cols, int bits) {
    std::vector<uint8_t> c(static_cast<size_t>(rows * cols));
    for (auto& v : c) v = static_cast<uint8_t>(rng() & ((1u << bits) - 1));
    return PackBitRows(c.data(), rows, cols, bits);
  };
  auto half = [&](float lo, float hi) {
    return F32ToF16(lo + (hi - lo) * static_cast<float>(rng() % 1000) / 1000.0f);
  };
  const int64_t groups = l.num_groups();
  l.weight_codes = codes(s.m, s.n, s.wbits);
  if (s.stats_bits == kFp16Stats) {
    for (int64_t i = 0; i < s.m * groups; ++i) {
      l.scale_f16.push_back(half(0.01f, 0.1f));
      l.zero_f16.push_back(half(0.0f, static_cast<float>((1 << s.wbits) - 1)));
    }
  } else {
    l.scale_codes = codes(s.m, groups, s.stats_bits);
    l.zero_codes = codes(s.m, groups, s.stats_bits);
    for (int64_t i = 0; i < l.num_row_blocks() * groups; ++i) {
      l.second_level.insert(l.second_level.end(), {half(0.001f, 0.01f), half(0.0f, 4.0f),
                                                   half(0.1f, 1.0f), half(0.0f, 4.0f)});
    }
  }
  l.outlier_row_offsets.push_back(0);
  for (int64_t r = 0; r < s.m; ++r) {
    if (r % 2 == 0) {
      for (int k = 0; k < s.outliers_per_row; ++k) {
        // Strictly increasing columns spread over the row.
        l.outlier_cols_u16.push_back(static_cast<uint16_t>(k * (s.n / s.outliers_per_row)));
        l.outlier_values.push_back(half(-2.0f, 2.0f));
      }
    }
    l.outlier_row_offsets.push_back(static_cast<uint32_t>(l.outlier_values.size()));
  }
  for (int64_t j = 0; j < s.n; ++j) l.perm.push_back(static_cast<uint32_t>(j));
  std::shuffle(l.perm.begin(), l.perm.end(), rng);
  return l;
}

// `zero_crc`: store 0 in the CRC slot (the fuzz target recomputes it).
void Append(const PackedSpqrLayer& l, const std::string& prefix, bool zero_crc,
            std::vector<OwnedTensor>* out) {
  for (OwnedTensor& t : SpqrLayerToTensors(l, prefix)) {
    if (zero_crc && t.name == prefix + ".spqr_meta") {
      std::fill_n(t.bytes.begin() + kMetaCrc32 * sizeof(uint32_t), sizeof(uint32_t), 0);
    }
    out->push_back(std::move(t));
  }
}

int Write(const std::string& path, const std::vector<OwnedTensor>& tensors) {
  std::vector<TensorView> views;
  for (const OwnedTensor& t : tensors) views.push_back(ViewOf(t));
  const absl::Status st = WriteSafetensors(path, views, {});
  if (!st.ok()) {
    std::fprintf(stderr, "%s\n", std::string(st.message()).c_str());
    return 1;
  }
  return 0;
}

int Main(const std::string& dir) {
  struct Seed {
    const char* file;
    std::vector<SeedLayer> layers;
    bool zero_crc;
  };
  // m = 5 with beta2 = 2 leaves a one-row last block; n = 24 makes 3-bit rows end mid-word.
  const std::vector<Seed> seeds = {
      {"w3_s3_outliers", {{5, 24, 3, 8, 2, 3, 2}}, false},
      {"w3_s3_outliers_crc0", {{5, 24, 3, 8, 2, 3, 2}}, true},
      {"w2_fp16_stats_crc0", {{3, 8, 2, 4, 1, 16, 0}}, true},
      {"w4_s4_one_group_crc0", {{4, 16, 4, 16, 4, 4, 1}}, true},
      {"w8_s8_two_layers", {{2, 8, 8, 2, 3, 8, 1}, {3, 4, 5, 4, 2, 6, 0}}, false},
  };
  int rc = 0;
  uint32_t seed = 1;
  for (const Seed& s : seeds) {
    std::vector<OwnedTensor> tensors;
    for (size_t i = 0; i < s.layers.size(); ++i) {
      const std::string prefix = "model.layers." + std::to_string(i) + ".mlp.up_proj";
      const PackedSpqrLayer layer = MakeLayer(s.layers[i], seed++);
      const absl::Status valid = ValidateSpqrLayer(layer, prefix);
      if (!valid.ok()) {
        std::fprintf(stderr, "%s: %s\n", s.file, std::string(valid.message()).c_str());
        return 1;
      }
      Append(layer, prefix, s.zero_crc, &tensors);
    }
    rc |= Write(dir + "/" + s.file, tensors);
  }
  return rc;
}

}  // namespace
}  // namespace spqr

int main(int argc, char** argv) {
  if (argc != 2) {
    std::fprintf(stderr, "usage: %s OUT_DIR\n", argv[0]);
    return 2;
  }
  return spqr::Main(argv[1]);
}
