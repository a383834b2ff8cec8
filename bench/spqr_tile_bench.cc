// The int8 SpQR tile kernel (engine/backend/cpu/spqr_tile_kernel.h) alone, on a random packed
// layer, to tell its compute from its memory traffic: the same kernel on a matrix that stays in
// L2 and on one that streams from DRAM, with and without outliers, at one token (decode) or
// more (batched decode, prefill).
//
//   spqr-bench-spqr-tile [--in 2048] [--wbits 3] [--outliers 0.017] [--threads 1] [--rounds 7]
//                        [--tokens 1]
//
// Prints one JSON line per case: best ns per 16x16 tile (per token) and the bytes per second the
// layer's resident bytes (codes, statistics, outliers) were read at. The layer comes from the
// tests' RandomSpqrLayer (tests/gpu/spqr_random_layer.h). Statistics are 3-bit with beta1 = beta2 =
// 16 (the configuration the peer benchmark quantizes), the permutation random.
#include <algorithm>
#include <chrono>
#include <cstdio>
#include <random>
#include <string>
#include <vector>

#include "absl/strings/numbers.h"
#include "engine/backend/cpu/spqr_tile_kernel.h"
#include "engine/backend/cpu/spqr_tile_layout.h"
#include "engine/backend/cpu/worker_pool.h"
#include "engine/format/spqr_layer.h"
#include "tests/gpu/spqr_random_layer.h"

namespace spqr {
namespace {

struct Args {
  int64_t in = 2048;
  int wbits = 3;
  double outliers = 0.017;  // the synthetic peer model's share at tau 0.2
  int threads = 1;
  int rounds = 7;
  int tokens = 1;
};

bool ParseArgs(int argc, char** argv, Args* a) {
  if (argc % 2 != 1) return false;
  for (int i = 1; i < argc; i += 2) {
    const std::string k = argv[i], v = argv[i + 1];
    bool ok = true;
    if (k == "--in") {
      ok = absl::SimpleAtoi(v, &a->in) && a->in > 0 && a->in % 16 == 0 && a->in <= 65536;
    } else if (k == "--wbits") {
      ok = absl::SimpleAtoi(v, &a->wbits) && a->wbits >= 2 && a->wbits <= 4;
    } else if (k == "--outliers") {
      ok = absl::SimpleAtod(v, &a->outliers) && a->outliers >= 0 && a->outliers < 1;
    } else if (k == "--threads") {
      ok = absl::SimpleAtoi(v, &a->threads) && a->threads > 0 && a->threads <= 64;
    } else if (k == "--tokens") {
      ok = absl::SimpleAtoi(v, &a->tokens) && a->tokens > 0 && a->tokens <= 512;
    } else if (k == "--rounds") {
      ok = absl::SimpleAtoi(v, &a->rounds) && a->rounds > 0;
    } else {
      ok = false;
    }
    if (!ok) return false;
  }
  return true;
}

int Run(const Args& a) {
  const cpu::TileIsa isa = cpu::BestTileIsa();
  std::printf("# isa %s, in %lld, wbits %d, threads %d\n", cpu::TileIsaName(isa),
              static_cast<long long>(a.in), a.wbits, a.threads);
  // Rows for ~0.25 MB of codes (L2) and for ~200 MB (DRAM).
  const int64_t code_bytes_per_row = a.in * a.wbits / 8;
  for (const int64_t target : {int64_t{256} << 10, int64_t{200} << 20}) {
    const int64_t m = std::max<int64_t>(16, target / code_bytes_per_row / 16 * 16);
    for (const double share : {0.0, a.outliers}) {
      std::mt19937 layer_rng(1);
      auto layout = cpu::BuildSpqrTileLayout(std::make_shared<const PackedSpqrLayer>(
          testing::RandomSpqrLayer({m, a.in, a.wbits, 16, 16, 3, share}, layer_rng)));
      if (!layout.ok()) {
        std::fprintf(stderr, "%s\n", std::string(layout.status().message()).c_str());
        return 1;
      }
      std::mt19937 rng(2);
      std::normal_distribution<float> normal(0.0f, 1.0f);
      std::vector<float> x(static_cast<size_t>(a.in * a.tokens));
      for (float& v : x) v = normal(rng);
      cpu::Int8Activations xq;
      cpu::QuantizeActivations(x.data(), a.tokens, a.in, (*layout)->unit_cols, &xq);
      std::vector<float> y(static_cast<size_t>(m * a.tokens));
      // Enough calls per round for ~50 ms of work.
      const int calls = std::max(1, (target < (int64_t{1} << 20) ? 400 : 4) / a.tokens);
      double best = 1e30;
      for (int round = 0; round < a.rounds; ++round) {
        const auto start = std::chrono::steady_clock::now();
        for (int c = 0; c < calls; ++c) {
          cpu::ParallelForStatic(a.threads, (*layout)->row_tiles, [&](int64_t b, int64_t e) {
            cpu::SpqrTileMatmulInt8(**layout, xq, x.data(), b, e, y.data(), m, isa);
          });
        }
        best = std::min(
            best, std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count() /
                      calls);
      }
      const double tiles = static_cast<double>((*layout)->row_tiles * (*layout)->col_tiles);
      std::printf(
          "{\"rows\": %lld, \"in\": %lld, \"wbits\": %d, \"outliers\": %.4f, \"threads\": %d, "
          "\"tokens\": %d, "
          "\"layout_mb\": %.1f, \"best_ms\": %.3f, \"ns_per_tile\": %.2f, \"gb_per_s\": %.1f}\n",
          static_cast<long long>(m), static_cast<long long>(a.in), a.wbits, share, a.threads,
          a.tokens, static_cast<double>((*layout)->bytes()) / 1e6, best * 1e3,
          best * 1e9 / tiles / a.tokens, static_cast<double>((*layout)->bytes()) / best / 1e9);
      if (a.outliers == 0.0) break;
    }
  }
  return 0;
}

}  // namespace
}  // namespace spqr

int main(int argc, char** argv) {
  spqr::Args a;
  if (!spqr::ParseArgs(argc, argv, &a)) {
    std::fprintf(stderr,
                 "usage: spqr-bench-spqr-tile [--in 2048] [--wbits 3] [--outliers 0.017] "
                 "[--threads 1] [--rounds 7] [--tokens 1]\n");
    return 2;
  }
  return spqr::Run(a);
}
