#include "engine/backend/cpu/spqr_linear.h"

#include <algorithm>
#include <vector>

#include "engine/backend/cpu/simd.h"
#include "engine/format/spqr_layer.h"
#include "engine/format/spqr_matmul.h"

namespace spqr::cpu {
namespace {

// Output rows per work item before rounding up to a multiple of beta2: enough work to amortize the
// per-item setup, small enough that 2..16 threads balance on a few-hundred-row projection.
constexpr int64_t kRowsPerItem = 32;

bool HasFusedBatchOnePath(const PackedSpqrLayer& layer) {
  return layer.beta1 == 8 || layer.beta1 == 16 || layer.beta1 == 32;
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
  const bool per_token = num_tokens > 1 && HasFusedBatchOnePath(packed);
  const float* xp = x_perm.data();
#pragma omp parallel num_threads(num_threads)
  {
    thread_local std::vector<float> row_scratch;
    if (row_scratch.size() < static_cast<size_t>(n)) row_scratch.resize(n);
#pragma omp for schedule(dynamic, 1)
    for (int64_t item = 0; item < items; ++item) {
      const int64_t r0 = item * rows_per_item;
      const int64_t r1 = std::min(m, r0 + rows_per_item);
      if (per_token) {
        for (int64_t t = 0; t < num_tokens; ++t) {
          SpqrMatmulRows(packed, xp + t * n, 1, y + t * m, m, r0, r1, row_scratch.data());
        }
      } else {
        SpqrMatmulRows(packed, xp, num_tokens, y, m, r0, r1, row_scratch.data());
      }
    }
  }

  if (layer.bias) {
    std::vector<float> bias(static_cast<size_t>(m));
    ConvertToF32(layer.bias->dtype, layer.bias->data, 0, m, bias.data());
    for (int64_t t = 0; t < num_tokens; ++t) {
      for (int64_t r = 0; r < m; ++r) y[t * m + r] += bias[r];
    }
  }
}

int64_t SpqrLinearBytes(const LinearTensors& layer) {
  if (layer.spqr == nullptr) return 0;
  return SpqrLayerPayloadBytes(*layer.spqr) +
         static_cast<int64_t>(layer.bias ? layer.bias->nbytes : 0);
}

}  // namespace spqr::cpu
