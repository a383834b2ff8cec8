// Token embedding lookup from a [vocab, hidden] F32/F16/BF16 table.
#pragma once

#include <cstdint>
#include <span>

#include "engine/model/tensor.h"

namespace spqr::cpu {

// out[i, :] = float(table[ids[i], :]). Ids must be in [0, vocab) (the backend validates plans).
void EmbeddingLookup(const TensorView& table, std::span<const int32_t> ids, int64_t hidden,
                     float* out);

}  // namespace spqr::cpu
