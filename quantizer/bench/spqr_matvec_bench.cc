// Batch-1 matrix-vector time of the packed SpQR kernel (engine/format/spqr_matmul.h) against the
// CPU backend's dense 16-bit Linear on one LLaMA-7B-sized layer (4096 x 4096), single thread and
// all threads. Prints one JSON line per measurement.
//   spqr-matvec-bench [rows] [cols] [iterations] [fp32|fp16]
// The last argument picks the layer's decode arithmetic (docs/model-format.md section 3; fp16 is
// what spqr-convert's imports use), default fp32.
#include <omp.h>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <functional>
#include <random>
#include <string>
#include <vector>

#include "engine/backend/cpu/linear.h"
#include "engine/format/spqr_matmul.h"
#include "engine/util/half.h"
#include "quantizer/spqr_layer_quantizer.h"

namespace {

double TimeIt(int iters, const std::function<void()>& f) {
  f();  // warm-up
  const auto t0 = std::chrono::steady_clock::now();
  for (int i = 0; i < iters; ++i) f();
  return std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count() / iters;
}

}  // namespace

int main(int argc, char** argv) {
  const int64_t m = argc > 1 ? std::atoll(argv[1]) : 4096;
  const int64_t n = argc > 2 ? std::atoll(argv[2]) : 4096;
  const int iters = argc > 3 ? std::atoi(argv[3]) : 20;
  const bool fp16_arithmetic = argc > 4 && std::string(argv[4]) == "fp16";
  std::mt19937 rng(1);
  std::normal_distribution<float> normal(0.0f, 0.02f);
  std::vector<float> w(m * n), x(n), y(m);
  for (float& v : w) v = normal(rng);
  for (float& v : x) v = normal(rng) * 50;
  std::vector<uint16_t> w_bf16(m * n);
  for (int64_t i = 0; i < m * n; ++i) w_bf16[i] = spqr::F32ToBf16(w[i]);

  spqr::SpqrLayerConfig c;
  c.method = spqr::SpqrLayerConfig::Method::kRtn;  // the kernel's cost does not depend on how
  c.act_order = false;                             // codes were chosen
  c.wbits = 3;
  c.beta1 = 16;
  c.beta2 = 16;
  c.stats_bits = 3;
  auto q = spqr::QuantizeLayer(w.data(), m, n, nullptr, c, 0);
  if (!q.ok()) return 1;
  spqr::PackedSpqrLayer layer = q->packed;
  if (fp16_arithmetic) layer.decode_arithmetic = spqr::SpqrDecodeArithmetic::kFp16;
  // ~0.5 % outliers at random positions so the sparse part is exercised.
  std::vector<std::vector<uint32_t>> cols(m);
  for (int64_t k = 0; k < m * n / 200; ++k) cols[rng() % m].push_back(rng() % n);
  layer.outlier_row_offsets.assign(m + 1, 0);
  layer.outlier_cols_u16.clear();
  layer.outlier_values.clear();
  for (int64_t r = 0; r < m; ++r) {
    std::sort(cols[r].begin(), cols[r].end());
    cols[r].erase(std::unique(cols[r].begin(), cols[r].end()), cols[r].end());
    for (uint32_t cidx : cols[r]) {
      layer.outlier_cols_u16.push_back(static_cast<uint16_t>(cidx));
      layer.outlier_values.push_back(spqr::F32ToF16(0.01f));
    }
    layer.outlier_row_offsets[r + 1] = layer.outlier_cols_u16.size();
  }

  spqr::LinearTensors dense;
  dense.weight =
      spqr::TensorView{"w", spqr::DType::kBF16, {m, n}, w_bf16.data(), w_bf16.size() * 2};
  dense.out_features = m;
  dense.in_features = n;
  spqr::cpu::PackedActivations act;
  spqr::cpu::PackActivations(x.data(), 1, n, &act);

  for (int threads : {1, omp_get_max_threads()}) {
    std::vector<float> x_perm(n);
    const double t_spqr = TimeIt(iters, [&] {
      spqr::GatherPermutedInputs(layer, x.data(), 1, x_perm.data());
#pragma omp parallel num_threads(threads)
      {
        std::vector<float> scratch(n);
        const int t = omp_get_thread_num(), nt = omp_get_num_threads();
        const int64_t r0 = m * t / nt, r1 = m * (t + 1) / nt;
        spqr::SpqrMatmulRows(layer, x_perm.data(), 1, y.data(), m, r0, r1, scratch.data());
      }
    });
    const double t_dense = TimeIt(iters, [&] { spqr::cpu::Linear(dense, act, y.data(), threads); });
    std::printf(
        "{\"rows\": %ld, \"cols\": %ld, \"threads\": %d, \"decode_arithmetic\": \"%s\", "
        "\"spqr_w3_16x16_us\": %.1f, \"dense_bf16_us\": %.1f, \"spqr_bytes\": %ld, "
        "\"bf16_bytes\": %ld}\n",
        static_cast<long>(m), static_cast<long>(n), threads, fp16_arithmetic ? "fp16" : "fp32",
        1e6 * t_spqr, 1e6 * t_dense, static_cast<long>(spqr::SpqrLayerPayloadBytes(layer)),
        static_cast<long>(m * n * 2));
  }
  return 0;
}
