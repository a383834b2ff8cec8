#include "engine/format/spqr_model.h"

#include <algorithm>
#include <cmath>
#include <filesystem>
#include <limits>

#include "absl/strings/str_cat.h"
#include "engine/format/spqr_layer.h"
#include "engine/format/spqr_tensors.h"
#include "nlohmann/json.hpp"

namespace spqr {

absl::StatusOr<std::optional<SpqrQuantizationInfo>> ParseSpqrQuantizationConfig(
    const std::string& config_json, const std::string& source) {
  const nlohmann::json j = nlohmann::json::parse(config_json, nullptr, false);
  if (j.is_discarded() || !j.is_object()) {
    return absl::InvalidArgumentError(absl::StrCat(source, ": not a JSON object"));
  }
  if (!j.contains("quantization_config") || j["quantization_config"].is_null()) {
    return std::optional<SpqrQuantizationInfo>();
  }
  const nlohmann::json& q = j["quantization_config"];
  if (!q.is_object() || q.value("quant_method", "") != "spqr") {
    return absl::InvalidArgumentError(absl::StrCat(
        source, ": quantization_config.quant_method must be \"spqr\" (other schemes unsupported)"));
  }
  SpqrQuantizationInfo info;
  try {
    info.format_version = q.at("format_version").get<int>();
    if (info.format_version != kSpqrFormatVersion) {
      return absl::FailedPreconditionError(
          absl::StrCat(source, ": unsupported spqr-format version ", info.format_version,
                       " (this build reads version ", kSpqrFormatVersion, ")"));
    }
    info.method = q.at("method").get<std::string>();
    info.wbits = q.at("wbits").get<int>();
    info.beta1 = q.at("beta1").get<int>();
    info.beta2 = q.at("beta2").get<int>();
    info.stats_bits = q.at("stats_bits").get<int>();
    info.tau =
        q.at("tau").is_null() ? std::numeric_limits<double>::infinity() : q.at("tau").get<double>();
    info.lambda = q.value("lambda", 0.0);
    info.act_order = q.value("act_order", false);
    info.avg_bits_formula = q.value("avg_bits_formula", 0.0);
    info.avg_bits_real = q.value("avg_bits_real", 0.0);
    info.outlier_share = q.value("outlier_share", 0.0);
    info.has_avg_bits_formula = q.contains("avg_bits_formula");
    info.has_avg_bits_real = q.contains("avg_bits_real");
    info.has_outlier_share = q.contains("outlier_share");
    info.quantizer_version = q.value("quantizer_version", "");
    if (q.contains("calibration") && q["calibration"].is_object()) {
      const nlohmann::json& c = q["calibration"];
      info.calibration =
          absl::StrCat("file=", c.value("file", ""), ", nsamples=", c.value("nsamples", 0),
                       ", seqlen=", c.value("seqlen", 0), ", seed=", c.value("seed", uint64_t{0}));
    }
    if (q.contains("shard_crc32")) {
      for (const auto& [file, crc] : q.at("shard_crc32").items()) {
        info.shard_crc32[file] = crc.get<uint32_t>();
      }
    }
  } catch (const nlohmann::json::exception& e) {
    return absl::InvalidArgumentError(
        absl::StrCat(source, ": malformed quantization_config: ", e.what()));
  }
  return std::optional<SpqrQuantizationInfo>(std::move(info));
}

absl::Status VerifyShardChecksums(const Checkpoint& checkpoint, const SpqrQuantizationInfo& info) {
  for (const auto& f : checkpoint.files()) {
    const std::string name = std::filesystem::path(f->path()).filename().string();
    if (info.shard_crc32.count(name) == 0) {
      return absl::DataLossError(absl::StrCat(
          "shard '", f->path(),
          "' has no CRC-32 entry in config.json's quantization_config."
          "shard_crc32; every shard of an SpQR model directory must be listed there (the "
          "quantizer writes them all), so this one is refused rather than loaded unchecked"));
    }
  }
  for (const auto& [file, expected] : info.shard_crc32) {
    const SafetensorsFile* found = nullptr;
    for (const auto& f : checkpoint.files()) {
      if (std::filesystem::path(f->path()).filename() == file) found = f.get();
    }
    if (found == nullptr) {
      return absl::NotFoundError(absl::StrCat("shard '", file,
                                              "' listed in quantization_config "
                                              "is not part of checkpoint ",
                                              checkpoint.dir()));
    }
    const uint32_t crc = Crc32(found->mapped_data(), found->mapped_size());
    if (crc != expected) {
      return absl::DataLossError(absl::StrCat("shard '", found->path(), "': CRC-32 ", crc,
                                              " does not match the recorded ", expected,
                                              "; the file is corrupt"));
    }
  }
  return absl::OkStatus();
}

namespace {

absl::Status Contradiction(const std::string& prefix, const char* what, int64_t config_value,
                           int64_t layer_value) {
  return absl::InvalidArgumentError(absl::StrCat(
      "SpQR layer '", prefix, "': ", what, "=", layer_value, " in its spqr_meta contradicts ", what,
      "=", config_value, " in config.json's quantization_config"));
}

// Relative agreement of a reported figure with the recomputed one. The quantizer writes both
// from the same doubles and JSON keeps 17 digits, so anything beyond rounding is a contradiction.
bool Agrees(double reported, double computed) {
  return std::fabs(reported - computed) <= 1e-9 * std::max(1.0, std::fabs(computed));
}

}  // namespace

absl::Status CheckLayerMatchesQuantizationConfig(const SpqrQuantizationInfo& info,
                                                 const PackedSpqrLayer& l,
                                                 const std::string& prefix) {
  if (l.wbits != info.wbits) return Contradiction(prefix, "wbits", info.wbits, l.wbits);
  if (l.stats_bits != info.stats_bits) {
    return Contradiction(prefix, "stats_bits", info.stats_bits, l.stats_bits);
  }
  const int64_t beta1 = info.beta1 == 0 ? l.in_features : info.beta1;
  if (l.beta1 != beta1) {
    return absl::InvalidArgumentError(absl::StrCat(
        "SpQR layer '", prefix, "': beta1=", l.beta1,
        " in its spqr_meta contradicts beta1=", info.beta1, " in config.json's quantization_config",
        info.beta1 == 0 ? absl::StrCat(" (0 = one group per row = ", beta1, ")") : ""));
  }
  // beta2 only shapes the second-level statistics; fp16 statistics have none.
  if (l.stats_bits != kFp16Stats && l.beta2 != info.beta2) {
    return Contradiction(prefix, "beta2", info.beta2, l.beta2);
  }
  const bool outliers_allowed = info.method == "spqr" && std::isfinite(info.tau);
  if (l.num_outliers() > 0 && !outliers_allowed) {
    return absl::InvalidArgumentError(absl::StrCat(
        "SpQR layer '", prefix, "' stores ", l.num_outliers(),
        " outliers but config.json's quantization_config says method=", info.method, ", tau=",
        std::isfinite(info.tau) ? absl::StrCat(info.tau) : std::string("null (no outliers)")));
  }
  return absl::OkStatus();
}

void SpqrLayerTotals::Add(const PackedSpqrLayer& l) {
  const int64_t params = l.out_features * l.in_features;
  parameters += params;
  outliers += l.num_outliers();
  payload_bytes += SpqrLayerPayloadBytes(l);
  formula_weighted += SpqrFormulaBitsPerParameter(l) * static_cast<double>(params);
}

absl::Status CheckTotalsMatchQuantizationConfig(const SpqrQuantizationInfo& info,
                                                const SpqrLayerTotals& t) {
  if (t.parameters <= 0) return absl::OkStatus();
  const double params = static_cast<double>(t.parameters);
  const double share = static_cast<double>(t.outliers) / params;
  if (info.has_outlier_share && !Agrees(info.outlier_share, share)) {
    return absl::InvalidArgumentError(
        absl::StrCat("config.json's quantization_config says outlier_share=", info.outlier_share,
                     " but the packed layers hold ", t.outliers, " outliers in ", t.parameters,
                     " parameters (share ", share, ")"));
  }
  const double real_bits = 8.0 * static_cast<double>(t.payload_bytes) / params;
  if (info.has_avg_bits_real && !Agrees(info.avg_bits_real, real_bits)) {
    return absl::InvalidArgumentError(
        absl::StrCat("config.json's quantization_config says avg_bits_real=", info.avg_bits_real,
                     " but the packed layers' payload is ", real_bits, " bits per parameter"));
  }
  const double formula_bits = t.formula_weighted / params;
  if (info.has_avg_bits_formula && !Agrees(info.avg_bits_formula, formula_bits)) {
    return absl::InvalidArgumentError(absl::StrCat(
        "config.json's quantization_config says avg_bits_formula=", info.avg_bits_formula,
        " but the packed layers' parameters give ", formula_bits, " bits per parameter"));
  }
  return absl::OkStatus();
}

}  // namespace spqr
