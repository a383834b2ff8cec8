// Load-time check that no dense floating-point weight holds a NaN or an infinity. One such value
// turns every logit of every request into NaN, which the sampler cannot detect (it would keep
// choosing token 0); refusing the model at load names the tensor instead.
#pragma once

#include <cstdint>
#include <vector>

#include "absl/status/status.h"
#include "engine/model/llama_weights.h"
#include "engine/model/tensor.h"

namespace spqr {

// The flat (row-major) index of the first NaN or +-Inf element of `view`, -1 when every element
// is finite or the dtype is not F32, F16 or BF16. Sequential; any alignment of `data` works.
int64_t FirstNonFiniteIndex(const TensorView& view);

// Scans every F32/F16/BF16 tensor of `views` for NaN/Inf, split into fixed-size chunks spread
// over OpenMP threads (`threads` <= 0: OpenMP's default). The result does not depend on the
// thread count: DATA_LOSS naming the first tensor (in `views` order) that holds a non-finite
// value, the first such flat index, and its row/column for a 2-D tensor.
absl::Status CheckTensorsFinite(const std::vector<const TensorView*>& views, int threads = 0);

// The dense floating-point tensors a forward pass reads: embeddings, every norm, every projection
// stored unquantized and every bias, and lm_head when it is not the (tied) embedding matrix.
// SpQR-packed projections are not included: their fp16 values are checked by ValidateSpqrLayer().
std::vector<const TensorView*> DenseFloatTensors(const LlamaWeights& weights);

}  // namespace spqr
