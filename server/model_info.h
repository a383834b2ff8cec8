// Pieces of GetModelInfo's response that are pure functions of the loaded model (unit-testable
// without a server).
#pragma once

#include "engine/runtime/model.h"
#include "spqr/v1/spqr.pb.h"

namespace spqr {

// Copies every field of `info` (method, dtype, the SpQR parameters and the quantizer's
// provenance) into `out`, overwriting it.
void FillQuantization(const QuantizationInfo& info, v1::Quantization* out);

}  // namespace spqr
