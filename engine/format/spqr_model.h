// Model-level pieces of "spqr-format 1" for loaders: the quantization_config block of config.json
// and the per-shard CRC-32 check (docs/model-format.md).
#pragma once

#include <cstdint>
#include <map>
#include <optional>
#include <string>

#include "absl/status/statusor.h"
#include "engine/format/spqr_layer.h"
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
  // Whether config.json states them (they are reports, optional in the format).
  bool has_avg_bits_formula = false, has_avg_bits_real = false, has_outlier_share = false;
  std::string quantizer_version;
  // Set by spqr-convert ("transformers-spqr"): the layers were imported, not quantized here, so
  // tau/lambda/calibration are unknown (tau is null) and outliers are allowed nevertheless.
  std::string imported_from;
  // "decode_arithmetic" (optional, default fp32): the decode variant every layer's spqr_meta must
  // state (spqr-convert writes "fp16"; docs/model-format.md section 3).
  SpqrDecodeArithmetic decode_arithmetic = SpqrDecodeArithmetic::kFp32;
  std::string calibration;                      // "file=..., nsamples=..., seqlen=..., seed=..."
  std::map<std::string, uint32_t> shard_crc32;  // file name -> CRC-32 of the whole file
};

// Parses the "quantization_config" of a config.json text. nullopt when there is none (a dense
// checkpoint); FAILED_PRECONDITION for quant_method "spqr" with a format version this build does
// not read; INVALID_ARGUMENT naming the field for malformed blocks.
absl::StatusOr<std::optional<SpqrQuantizationInfo>> ParseSpqrQuantizationConfig(
    const std::string& config_json, const std::string& source);

// Recomputes the CRC-32 of every shard file listed in `info` (DATA_LOSS naming the file on a
// mismatch, NOT_FOUND when a listed shard is not part of the checkpoint). Every shard of the
// checkpoint must have an entry: DATA_LOSS naming the shard otherwise (a shard without a checksum
// would be loaded unchecked).
absl::Status VerifyShardChecksums(const Checkpoint& checkpoint, const SpqrQuantizationInfo& info);

// Checks one packed layer's own parameters (its spqr_meta) against config.json's
// quantization_config: wbits, beta1 (0 in the config = one group per row, i.e. in_features),
// beta2 (bilevel statistics only), stats_bits, the decode arithmetic, and outliers only where the
// config allows them (method spqr with a finite tau). INVALID_ARGUMENT naming the layer and both
// values.
absl::Status CheckLayerMatchesQuantizationConfig(const SpqrQuantizationInfo& info,
                                                 const PackedSpqrLayer& layer,
                                                 const std::string& prefix);

// The model-wide figures of the packed layers, summed in binding order.
struct SpqrLayerTotals {
  int64_t parameters = 0;       // sum of out x in
  int64_t outliers = 0;         // sum of num_outliers()
  int64_t payload_bytes = 0;    // sum of SpqrLayerPayloadBytes()
  double formula_weighted = 0;  // sum of SpqrFormulaBitsPerParameter() x parameters
  void Add(const PackedSpqrLayer& layer);
};

// Checks the model-wide figures config.json reports (outlier_share, avg_bits_real,
// avg_bits_formula; each only when present) against `totals` over every packed layer.
// INVALID_ARGUMENT naming both values.
absl::Status CheckTotalsMatchQuantizationConfig(const SpqrQuantizationInfo& info,
                                                const SpqrLayerTotals& totals);

}  // namespace spqr
