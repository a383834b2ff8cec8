// Test helper shared by the SpQR serving and perplexity tests: turns an SpQR model directory into
// the dense model its decoder describes, so a kernel's output can be compared with a plain dense
// forward of exactly the weights the format stores.
#pragma once

#include <cstdint>
#include <string>

#include "absl/status/status.h"

namespace spqr {

// Writes `dense_dir`: the SpQR model's unquantized tensors as stored plus, for every packed layer,
// "<prefix>.weight" = DequantizeSpqrLayer() as F32, next to `source_dir`'s config.json (no
// quantization_config), generation_config.json and tokenizer.model. With `drop_outliers` the
// layers are decoded without their outliers (the model an SpQR kernel that skipped the outlier
// pass would compute) and `*dropped` (if not null) receives how many were dropped.
absl::Status WriteDequantizedModel(const std::string& spqr_dir, const std::string& source_dir,
                                   const std::string& dense_dir, bool drop_outliers = false,
                                   int64_t* dropped = nullptr);

}  // namespace spqr
