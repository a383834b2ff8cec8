#include "engine/format/spqr_model.h"

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

}  // namespace spqr
