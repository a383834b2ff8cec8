#include "quantizer/hf_convert.h"

#include <chrono>
#include <cmath>
#include <filesystem>
#include <fstream>
#include <map>
#include <set>
#include <sstream>
#include <utility>
#include <vector>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "engine/format/spqr_model.h"
#include "engine/format/spqr_tensors.h"
#include "engine/model/model_config.h"
#include "engine/model/safetensors.h"
#include "engine/util/status_macros.h"
#include "nlohmann/json.hpp"
#include "quantizer/block_forward.h"
#include "quantizer/hf_spqr_import.h"
#include "quantizer/output_dir.h"
#include "quantizer/safetensors_writer.h"

namespace spqr {
namespace {

namespace fs = std::filesystem;

constexpr char kConverterVersion[] = "spqr-convert 2";

absl::StatusOr<std::string> ReadText(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  if (!in) return absl::NotFoundError(absl::StrCat("cannot read '", path, "'"));
  std::stringstream ss;
  ss << in.rdbuf();
  return ss.str();
}

absl::Status WriteText(const std::string& path, const std::string& text) {
  std::ofstream out(path, std::ios::binary);
  out << text;
  out.flush();
  if (!out) return absl::DataLossError(absl::StrCat("cannot write '", path, "'"));
  return absl::OkStatus();
}

// Their quantization_config: quant_method "spqr", bits 3, beta1 16 (tile height), beta2 16 (tile
// width); anything else has no decoder in their package and none here.
absl::Status CheckTheirConfig(const nlohmann::json& q, const std::string& source) {
  auto bad = [&](const std::string& what) {
    return absl::InvalidArgumentError(absl::StrCat(source, ": quantization_config.", what));
  };
  if (!q.is_object()) return bad("is not an object");
  if (!q.contains("quant_method") || q["quant_method"] != "spqr") {
    return bad("quant_method must be \"spqr\"");
  }
  if (q.contains("format_version")) {
    return bad("format_version is present: this is already an spqr-format directory");
  }
  const std::pair<const char*, int> expected[] = {
      {"bits", kHfSpqrBits}, {"beta1", kHfSpqrTile}, {"beta2", kHfSpqrTile}};
  for (const auto& [key, value] : expected) {
    if (!q.contains(key) || !q[key].is_number_integer() || q[key].get<int64_t>() != value) {
      return bad(absl::StrCat(key, " must be the integer ", value,
                              " (the only layout of the spqr_quant kernels), found ",
                              q.contains(key) ? q[key].dump() : std::string("nothing")));
    }
  }
  if (q.contains("shapes") && !q["shapes"].is_object()) return bad("shapes is not an object");
  return absl::OkStatus();
}

// The config's shapes entry for `tensor` (when the config has shapes) must equal the element
// count of the stored tensor.
absl::Status CheckShapeEntry(const nlohmann::json& q, const Checkpoint& ck,
                             const std::string& tensor, const std::string& source) {
  if (!q.contains("shapes")) return absl::OkStatus();
  const std::string key = tensor + ".shape";
  const nlohmann::json& shapes = q["shapes"];
  if (!shapes.contains(key)) {
    return absl::InvalidArgumentError(
        absl::StrCat(source, ": quantization_config.shapes has no entry '", key, "'"));
  }
  const TensorView* v = ck.Find(tensor);
  if (v == nullptr) {
    return absl::InvalidArgumentError(absl::StrCat(source, ": quantization_config.shapes has '",
                                                   key, "' but tensor '", tensor, "' is missing"));
  }
  const int64_t have = v->numel();
  if (!shapes[key].is_number_integer() || shapes[key].get<int64_t>() != have) {
    return absl::InvalidArgumentError(absl::StrCat(source, ": quantization_config.shapes['", key,
                                                   "'] = ", shapes[key].dump(), " but tensor '",
                                                   tensor, "' has ", have, " elements"));
  }
  return absl::OkStatus();
}

struct RemoveOnExit {
  std::string path;
  ~RemoveOnExit() {
    if (!path.empty()) {
      std::error_code ec;
      fs::remove_all(path, ec);
    }
  }
};

}  // namespace

absl::StatusOr<HfConvertReport> ConvertHfSpqrModel(const std::string& input_dir,
                                                   const std::string& output_dir, bool force) {
  const auto start = std::chrono::steady_clock::now();
  RETURN_IF_ERROR(CheckOutputDirectory(input_dir, output_dir, /*calibration_text=*/"", force));
  const std::string config_path = input_dir + "/config.json";
  ASSIGN_OR_RETURN(const std::string config_text, ReadText(config_path));
  nlohmann::ordered_json cfg = nlohmann::ordered_json::parse(config_text, nullptr, false);
  if (cfg.is_discarded() || !cfg.is_object()) {
    return absl::InvalidArgumentError(absl::StrCat(config_path, ": not a JSON object"));
  }
  if (!cfg.contains("quantization_config")) {
    return absl::InvalidArgumentError(
        absl::StrCat(config_path, ": no quantization_config (not a transformers SpQR checkpoint)"));
  }
  const nlohmann::json their = nlohmann::json::parse(cfg["quantization_config"].dump());
  RETURN_IF_ERROR(CheckTheirConfig(their, config_path));
  // The model parameters (shapes of the projections) come from the same config.json; its
  // quantization_config is not ours, so parse a copy without it.
  nlohmann::ordered_json model_only = cfg;
  model_only.erase("quantization_config");
  ASSIGN_OR_RETURN(const ModelConfig config, ParseModelConfig(model_only.dump(), config_path));
  ASSIGN_OR_RETURN(std::unique_ptr<Checkpoint> ck, Checkpoint::Open(input_dir));
  const TensorLookup lookup = [&ck](const std::string& name) { return ck->Find(name); };

  ASSIGN_OR_RETURN(const std::string tmp, CreateTemporaryOutput(output_dir));
  RemoveOnExit remove_tmp{tmp};
  const int64_t hidden = config.hidden_size;
  const int64_t q_dim = config.num_attention_heads * config.head_dim;
  const int64_t kv_dim = config.num_key_value_heads * config.head_dim;
  const int64_t inter = config.intermediate_size;
  const int64_t shape[7][2] = {{q_dim, hidden}, {kv_dim, hidden}, {kv_dim, hidden}, {hidden, q_dim},
                               {inter, hidden}, {inter, hidden},  {hidden, inter}};
  const int64_t shards = config.num_hidden_layers + 1;
  auto shard_name = [&](int64_t i) {
    return absl::StrFormat("model-%05d-of-%05d.safetensors", i + 1, shards);
  };
  std::set<std::string> used;
  nlohmann::ordered_json weight_map = nlohmann::ordered_json::object();
  nlohmann::ordered_json shard_crc = nlohmann::ordered_json::object();
  auto write_shard = [&](int64_t index, const std::vector<TensorView>& views) -> absl::Status {
    const std::string file = shard_name(index);
    RETURN_IF_ERROR(WriteSafetensors(tmp + "/" + file, views, {{"format", "pt"}}));
    for (const TensorView& v : views) weight_map[v.name] = file;
    ASSIGN_OR_RETURN(const std::string bytes, ReadText(tmp + "/" + file));
    shard_crc[file] = Crc32(bytes.data(), bytes.size());
    return absl::OkStatus();
  };

  HfConvertReport report;
  SpqrLayerTotals totals;
  for (int64_t i = 0; i < config.num_hidden_layers; ++i) {
    std::vector<OwnedTensor> owned;
    for (int li = 0; li < 7; ++li) {
      const std::string prefix = absl::StrCat("model.layers.", i, ".", kBlockLinearNames[li]);
      if (ck->Find(prefix + ".dense_weights") == nullptr) {
        return absl::InvalidArgumentError(absl::StrCat(
            "projection '", prefix, "' in ", input_dir, " has no '", prefix, ".dense_weights'",
            ck->Find(prefix + ".weight") != nullptr
                ? " (it is stored dense; spqr-format 1 requires every decoder projection packed)"
                : ""));
      }
      for (const char* part : {".dense_weights", ".row_offsets", ".col_vals", ".in_perm"}) {
        RETURN_IF_ERROR(CheckShapeEntry(their, *ck, prefix + part, config_path));
        used.insert(prefix + part);
      }
      ASSIGN_OR_RETURN(PackedSpqrLayer layer,
                       ImportHfSpqrLayer(lookup, prefix, shape[li][0], shape[li][1]));
      totals.Add(layer);
      ++report.layers;
      for (OwnedTensor& t : SpqrLayerToTensors(layer, prefix)) owned.push_back(std::move(t));
    }
    std::vector<TensorView> views;
    for (const OwnedTensor& t : owned) views.push_back(ViewOf(t));
    RETURN_IF_ERROR(write_shard(i + 1, views));
  }
  // Everything else is copied as stored: embeddings, norms, lm_head, biases. The engine's binder
  // checks their dtypes and shapes when it loads the result.
  std::vector<TensorView> rest;
  for (const std::string& name : ck->Names()) {
    if (used.count(name) > 0) continue;
    const TensorView* v = ck->Find(name);
    const bool is_float =
        v->dtype == DType::kF16 || v->dtype == DType::kBF16 || v->dtype == DType::kF32;
    if (!is_float) {
      return absl::InvalidArgumentError(absl::StrCat(
          "tensor '", name, "' in ", input_dir, " (", std::string(DTypeName(v->dtype)),
          ") is not part of a decoder projection this converter knows and not a float tensor"));
    }
    rest.push_back(*v);
  }
  RETURN_IF_ERROR(write_shard(0, rest));

  const double params = static_cast<double>(totals.parameters);
  report.parameters = totals.parameters;
  report.outliers = totals.outliers;
  report.avg_bits_real = 8.0 * static_cast<double>(totals.payload_bytes) / params;
  nlohmann::ordered_json qc = {
      {"quant_method", "spqr"},
      {"format", "spqr-format"},
      {"format_version", kSpqrFormatVersion},
      {"method", "spqr"},
      {"wbits", kHfSpqrBits},
      {"beta1", kHfSpqrTile},
      {"beta2", kHfSpqrTile},
      {"stats_bits", kHfSpqrBits},
      {"tau", nullptr},  // not recorded by the transformers format (nor lambda, act_order)
      {"avg_bits_formula", totals.formula_weighted / params},
      {"avg_bits_real", report.avg_bits_real},
      {"outlier_share", static_cast<double>(totals.outliers) / params},
      {"quantizer_version", kConverterVersion},
      {"imported_from", "transformers-spqr"},
      {"decode_arithmetic", "fp16"},  // every layer: their decoders round each step to fp16
      {"shard_crc32", shard_crc}};
  cfg["quantization_config"] = qc;
  RETURN_IF_ERROR(WriteText(tmp + "/config.json", cfg.dump(2) + "\n"));
  nlohmann::ordered_json index = {{"metadata", {{"format", "spqr-format 1"}}},
                                  {"weight_map", weight_map}};
  RETURN_IF_ERROR(WriteText(tmp + "/model.safetensors.index.json", index.dump(2) + "\n"));
  for (const char* name :
       {"tokenizer.model", "tokenizer.json", "special_tokens_map.json", "generation_config.json",
        "tokenizer_config.json", "chat_template.jinja", "chat_template.json"}) {
    const fs::path src = fs::path(input_dir) / name;
    if (!fs::exists(src)) continue;
    std::error_code ec;
    fs::copy_file(src, fs::path(tmp) / name, fs::copy_options::overwrite_existing, ec);
    if (ec) {
      return absl::DataLossError(absl::StrCat("cannot copy ", src.string(), ": ", ec.message()));
    }
  }
  RETURN_IF_ERROR(
      WriteText(tmp + "/" + kOutputMarker, OutputMarkerJson(kConverterVersion, input_dir)));
  const absl::Status published = PublishOutput(tmp, output_dir, force);
  if (published.ok() || published.code() == absl::StatusCode::kFailedPrecondition) {
    remove_tmp.path.clear();
  }
  RETURN_IF_ERROR(published);
  report.seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
  return report;
}

}  // namespace spqr
