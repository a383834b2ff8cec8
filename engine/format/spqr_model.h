// Model-level pieces of "spqr-format 1" for loaders: the quantization_config block of config.json
// and the per-shard CRC-32 check (docs/model-format.md).
#pragma once

#include <cstdint>
#include <map>
#include <optional>
#include <string>

#include "absl/status/statusor.h"
#include "engine/model/safetensors.h"

namespace spqr {

struct SpqrQuantizationInfo {
  std::string method;  // "spqr", "gptq", "rtn"
  int format_version = 0;
  int wbits = 0, beta1 = 0, beta2 = 0, stats_bits = 0;
  double tau = 0.0;  // infinity when config.json says null (no outliers)
  double lambda = 0.0;
  bool act_order = false;
  double avg_bits_formula = 0.0, avg_bits_real = 0.0, outlier_share = 0.0;
  std::string quantizer_version;
  std::string calibration;                      // "file=..., nsamples=..., seqlen=..., seed=..."
  std::map<std::string, uint32_t> shard_crc32;  // file name -> CRC-32 of the whole file
};

// Parses the "quantization_config" of a config.json text. nullopt when there is none (a dense
// checkpoint); FAILED_PRECONDITION for quant_method "spqr" with a format version this build does
// not read; INVALID_ARGUMENT naming the field for malformed blocks.
absl::StatusOr<std::optional<SpqrQuantizationInfo>> ParseSpqrQuantizationConfig(
    const std::string& config_json, const std::string& source);

// Recomputes the CRC-32 of every shard file listed in `info` (DATA_LOSS naming the file on a
// mismatch, NOT_FOUND when a listed shard is not part of the checkpoint).
absl::Status VerifyShardChecksums(const Checkpoint& checkpoint, const SpqrQuantizationInfo& info);

}  // namespace spqr
