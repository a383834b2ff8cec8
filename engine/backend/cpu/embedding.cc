#include "engine/backend/cpu/embedding.h"

#include "engine/backend/cpu/simd.h"

namespace spqr::cpu {

void EmbeddingLookup(const TensorView& table, std::span<const int32_t> ids, int64_t hidden,
                     float* out) {
  for (size_t i = 0; i < ids.size(); ++i) {
    ConvertToF32(table.dtype, table.data, static_cast<int64_t>(ids[i]) * hidden, hidden,
                 out + i * hidden);
  }
}

}  // namespace spqr::cpu
