#include "engine/format/spqr_model.h"

#include <algorithm>
#include <cmath>
#include <filesystem>
#include <limits>

#include "absl/strings/str_cat.h"
#include "engine/format/spqr_layer.h"
#include "engine/format/spqr_tensors.h"
#include "engine/util/status_macros.h"
#include "nlohmann/json.hpp"

namespace spqr {

namespace {

// Typed reads of quantization_config keys; errors name the key. nlohmann's own conversions are not
// safe on untrusted text: value() throws on a wrong type, get<int>() wraps out-of-range integers
// and converts out-of-range floats with undefined behaviour (found by model_config_fuzz).
class QuantizationConfigReader {
 public:
  QuantizationConfigReader(const nlohmann::json& object, std::string where)
      : object_(object), where_(std::move(where)) {}

  const nlohmann::json* Get(const std::string& key) const {
    auto it = object_.find(key);
    return it == object_.end() ? nullptr : &*it;
  }

  absl::Status Error(const std::string& key, const char* expected) const {
    const nlohmann::json* value = Get(key);
    return absl::InvalidArgumentError(absl::StrCat(
        where_, ".", key, " must be ", expected,
        value == nullptr
            ? std::string(", but it is missing")
            : absl::StrCat(", found ", value->type_name(), " ",
                           value->dump(-1, ' ', false, nlohmann::json::error_handler_t::replace))));
  }

  // An integer in [min, max]; `fallback` when absent (required when there is none).
  absl::StatusOr<int64_t> Int(const std::string& key, int64_t min, int64_t max,
                              std::optional<int64_t> fallback = std::nullopt) const {
    const nlohmann::json* value = Get(key);
    if (value == nullptr && fallback) return *fallback;
    const std::string expected = absl::StrCat("an integer in ", min, "..", max);
    if (value == nullptr || !value->is_number_integer()) return Error(key, expected.c_str());
    if (value->is_number_unsigned()) {
      const uint64_t u = value->get<uint64_t>();
      if (max < 0 || u > static_cast<uint64_t>(max)) return Error(key, expected.c_str());
      return static_cast<int64_t>(u);
    }
    const int64_t i = value->get<int64_t>();
    if (i < min || i > max) return Error(key, expected.c_str());
    return i;
  }

  absl::StatusOr<double> Number(const std::string& key, double fallback) const {
    const nlohmann::json* value = Get(key);
    if (value == nullptr) return fallback;
    if (!value->is_number()) return Error(key, "a number");
    return value->get<double>();
  }

  absl::StatusOr<std::string> String(const std::string& key,
                                     std::optional<std::string> fallback) const {
    const nlohmann::json* value = Get(key);
    if (value == nullptr && fallback) return *fallback;
    if (value == nullptr || !value->is_string()) return Error(key, "a string");
    return value->get<std::string>();
  }

  absl::StatusOr<bool> Bool(const std::string& key, bool fallback) const {
    const nlohmann::json* value = Get(key);
    if (value == nullptr) return fallback;
    if (!value->is_boolean()) return Error(key, "true or false");
    return value->get<bool>();
  }

 private:
  const nlohmann::json& object_;
  const std::string where_;
};

}  // namespace

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
  if (!q.is_object() || !q.contains("quant_method") || q["quant_method"] != "spqr") {
    return absl::InvalidArgumentError(absl::StrCat(
        source, ": quantization_config.quant_method must be \"spqr\" (other schemes unsupported)"));
  }
  const QuantizationConfigReader r(q, absl::StrCat(source, ": quantization_config"));
  constexpr int64_t kIntMax = std::numeric_limits<int>::max();
  SpqrQuantizationInfo info;
  // A checkpoint written for transformers (the authors' spqr_quant layout) has no format_version
  // but bits/shapes; it must be converted first (docs/model-format.md, section 11).
  if (!q.contains("format_version") && (q.contains("bits") || q.contains("shapes"))) {
    return absl::FailedPreconditionError(absl::StrCat(
        source,
        ": this is a transformers SpQR checkpoint (quantization_config with bits/beta1/beta2/"
        "shapes, tensors dense_weights/row_offsets/col_vals/in_perm); convert it to spqr-format 1 "
        "with `spqr-convert --in DIR --out DIR`"));
  }
  ASSIGN_OR_RETURN(const int64_t version, r.Int("format_version", 0, kIntMax));
  if (version != kSpqrFormatVersion) {
    return absl::FailedPreconditionError(absl::StrCat(source, ": unsupported spqr-format version ",
                                                      version, " (this build reads version ",
                                                      kSpqrFormatVersion, ")"));
  }
  info.format_version = static_cast<int>(version);
  ASSIGN_OR_RETURN(info.method, r.String("method", std::nullopt));
  // Ranges only keep the values representable; CheckLayerMatchesQuantizationConfig compares them
  // with every layer's own parameters, which ValidateSpqrLayer has range-checked.
  ASSIGN_OR_RETURN(const int64_t wbits, r.Int("wbits", 0, kIntMax));
  ASSIGN_OR_RETURN(const int64_t beta1, r.Int("beta1", 0, kIntMax));
  ASSIGN_OR_RETURN(const int64_t beta2, r.Int("beta2", 0, kIntMax));
  ASSIGN_OR_RETURN(const int64_t stats_bits, r.Int("stats_bits", 0, kIntMax));
  info.wbits = static_cast<int>(wbits);
  info.beta1 = static_cast<int>(beta1);
  info.beta2 = static_cast<int>(beta2);
  info.stats_bits = static_cast<int>(stats_bits);
  const nlohmann::json* tau = r.Get("tau");
  if (tau == nullptr || !(tau->is_null() || tau->is_number())) {
    return r.Error("tau", "a number or null");
  }
  info.tau = tau->is_null() ? std::numeric_limits<double>::infinity() : tau->get<double>();
  ASSIGN_OR_RETURN(info.lambda, r.Number("lambda", 0.0));
  ASSIGN_OR_RETURN(info.act_order, r.Bool("act_order", false));
  ASSIGN_OR_RETURN(info.avg_bits_formula, r.Number("avg_bits_formula", 0.0));
  ASSIGN_OR_RETURN(info.avg_bits_real, r.Number("avg_bits_real", 0.0));
  ASSIGN_OR_RETURN(info.outlier_share, r.Number("outlier_share", 0.0));
  info.has_avg_bits_formula = q.contains("avg_bits_formula");
  info.has_avg_bits_real = q.contains("avg_bits_real");
  info.has_outlier_share = q.contains("outlier_share");
  ASSIGN_OR_RETURN(info.quantizer_version, r.String("quantizer_version", ""));
  ASSIGN_OR_RETURN(info.imported_from, r.String("imported_from", ""));
  ASSIGN_OR_RETURN(const std::string arithmetic, r.String("decode_arithmetic", "fp32"));
  if (arithmetic == "fp16") {
    info.decode_arithmetic = SpqrDecodeArithmetic::kFp16;
  } else if (arithmetic != "fp32") {
    return r.Error("decode_arithmetic", "\"fp32\" or \"fp16\"");
  }
  if (q.contains("calibration") && q["calibration"].is_object()) {
    const QuantizationConfigReader c(q["calibration"],
                                     absl::StrCat(source, ": quantization_config.calibration"));
    constexpr int64_t kInt64Max = std::numeric_limits<int64_t>::max();
    ASSIGN_OR_RETURN(const std::string file, c.String("file", ""));
    ASSIGN_OR_RETURN(const int64_t nsamples, c.Int("nsamples", 0, kInt64Max, 0));
    ASSIGN_OR_RETURN(const int64_t seqlen, c.Int("seqlen", 0, kInt64Max, 0));
    // The seed is a uint64_t in the quantizer.
    const nlohmann::json* seed = c.Get("seed");
    if (seed != nullptr && !seed->is_number_unsigned()) {
      return c.Error("seed", "an integer in 0..18446744073709551615");
    }
    info.calibration = absl::StrCat("file=", file, ", nsamples=", nsamples, ", seqlen=", seqlen,
                                    ", seed=", seed == nullptr ? 0 : seed->get<uint64_t>());
  }
  if (q.contains("shard_crc32")) {
    if (!q["shard_crc32"].is_object()) return r.Error("shard_crc32", "an object");
    const QuantizationConfigReader crcs(q["shard_crc32"],
                                        absl::StrCat(source, ": quantization_config.shard_crc32"));
    for (const auto& item : q["shard_crc32"].items()) {
      ASSIGN_OR_RETURN(const int64_t crc,
                       crcs.Int(item.key(), 0, std::numeric_limits<uint32_t>::max()));
      info.shard_crc32[item.key()] = static_cast<uint32_t>(crc);
    }
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
  if (l.decode_arithmetic != info.decode_arithmetic) {
    auto label = [](SpqrDecodeArithmetic a) {
      return a == SpqrDecodeArithmetic::kFp16 ? "fp16" : "fp32";
    };
    return absl::InvalidArgumentError(absl::StrCat(
        "SpQR layer '", prefix, "': decode arithmetic ", label(l.decode_arithmetic),
        " in its spqr_meta contradicts decode_arithmetic=", label(info.decode_arithmetic),
        " in config.json's quantization_config"));
  }
  // beta2 only shapes the second-level statistics; fp16 statistics have none.
  if (l.stats_bits != kFp16Stats && l.beta2 != info.beta2) {
    return Contradiction(prefix, "beta2", info.beta2, l.beta2);
  }
  // An imported checkpoint (spqr-convert) has outliers but no recorded tau.
  const bool outliers_allowed =
      info.method == "spqr" && (std::isfinite(info.tau) || !info.imported_from.empty());
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
