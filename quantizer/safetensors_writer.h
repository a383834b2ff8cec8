// Writes a .safetensors file (the format the engine's reader validates): an 8-byte little-endian
// header length, a JSON header (padded with spaces to a multiple of 8 bytes) mapping each tensor
// name to dtype, shape and [begin, end) data offsets, then the tensors' bytes back to back.
#pragma once

#include <map>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "engine/format/spqr_tensors.h"
#include "engine/model/tensor.h"

namespace spqr {

// Non-owning view of `t`.
TensorView ViewOf(const OwnedTensor& t);

// Writes `tensors` (names must be unique) and the string `metadata` to `path`.
absl::Status WriteSafetensors(const std::string& path, const std::vector<TensorView>& tensors,
                              const std::map<std::string, std::string>& metadata);

}  // namespace spqr
