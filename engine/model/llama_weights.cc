#include "engine/model/llama_weights.h"

#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <sstream>
#include <string>
#include <utility>

#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "absl/strings/string_view.h"
#include "absl/strings/strip.h"
#include "engine/format/spqr_model.h"
#include "engine/format/spqr_tensors.h"
#include "engine/model/finite_check.h"
#include "engine/util/status_macros.h"

namespace spqr {
namespace {

std::string ShapeString(const std::vector<int64_t>& shape) {
  return absl::StrCat("[", absl::StrJoin(shape, ", "), "]");
}

bool IsFloatType(DType dtype) {
  return dtype == DType::kF32 || dtype == DType::kF16 || dtype == DType::kBF16;
}

// Looks up one tensor and checks it is floating point with exactly `shape`.
class Binder {
 public:
  // `quantization`: the checkpoint is an SpQR model directory (null: dense), so the decoder
  // projections must be stored packed ("<prefix>.spqr_meta") and are bound as SpQR layers, each
  // checked against the quantization_config and added to totals().
  Binder(const Checkpoint& checkpoint, const SpqrQuantizationInfo* quantization)
      : checkpoint_(checkpoint), quantization_(quantization) {}

  const SpqrLayerTotals& totals() const { return totals_; }

  absl::StatusOr<TensorView> Tensor(const std::string& name, std::vector<int64_t> shape) const {
    ASSIGN_OR_RETURN(const TensorView* view, checkpoint_.Require(name));
    RETURN_IF_ERROR(Check(*view, shape));
    return *view;
  }

  absl::Status Check(const TensorView& view, const std::vector<int64_t>& shape) const {
    if (!IsFloatType(view.dtype)) {
      return absl::InvalidArgumentError(
          absl::StrCat("tensor '", view.name, "' in ", checkpoint_.dir(), ": dtype ",
                       std::string(DTypeName(view.dtype)),
                       " is not supported for dense weights (expected F32, F16 or BF16)"));
    }
    if (view.shape != shape) {
      return absl::InvalidArgumentError(
          absl::StrCat("tensor '", view.name, "' in ", checkpoint_.dir(), ": expected shape ",
                       ShapeString(shape), ", found ", ShapeString(view.shape)));
    }
    return absl::OkStatus();
  }

  // `prefix`.weight of [out, in], plus `prefix`.bias of [out] when `with_bias`. A bias the
  // config does not expect is an error: ignoring it would silently compute a different model.
  absl::StatusOr<LinearTensors> Linear(const std::string& prefix, int64_t out, int64_t in,
                                       bool with_bias) {
    LinearTensors linear;
    linear.out_features = out;
    linear.in_features = in;
    const TensorLookup lookup = [this](const std::string& name) { return checkpoint_.Find(name); };
    if (quantization_ != nullptr) {
      // The quantizer packs every decoder projection; a dense one would make the reported
      // quantization (bits, outliers) describe a different model than the one served.
      if (!HasSpqrLayer(lookup, prefix)) {
        return absl::InvalidArgumentError(absl::StrCat(
            "projection '", prefix, "' in ", checkpoint_.dir(), " has no '", prefix,
            ".spqr_meta': config.json has a quantization_config, so every decoder projection must "
            "be stored SpQR-packed"));
      }
      ASSIGN_OR_RETURN(PackedSpqrLayer packed, SpqrLayerFromTensors(lookup, prefix));
      if (packed.out_features != out || packed.in_features != in) {
        return absl::InvalidArgumentError(
            absl::StrCat("SpQR layer '", prefix, "' in ", checkpoint_.dir(), ": expected shape ",
                         ShapeString({out, in}), ", found ",
                         ShapeString({packed.out_features, packed.in_features})));
      }
      RETURN_IF_ERROR(CheckLayerMatchesQuantizationConfig(*quantization_, packed, prefix));
      totals_.Add(packed);
      linear.spqr = std::make_shared<const PackedSpqrLayer>(std::move(packed));
    } else {
      ASSIGN_OR_RETURN(linear.weight, Tensor(prefix + ".weight", {out, in}));
    }
    const std::string bias_name = prefix + ".bias";
    if (with_bias) {
      ASSIGN_OR_RETURN(linear.bias, Tensor(bias_name, {out}));
    } else if (checkpoint_.Find(bias_name) != nullptr) {
      return absl::InvalidArgumentError(
          absl::StrCat("tensor '", bias_name, "' in ", checkpoint_.dir(),
                       " is present but the config has no bias for this layer (attention_bias is "
                       "false for model_type llama/mistral unless set)"));
    }
    return linear;
  }

 private:
  const Checkpoint& checkpoint_;
  const SpqrQuantizationInfo* const quantization_;
  SpqrLayerTotals totals_;
};

// The quantization_config of the checkpoint's config.json, nullopt for a dense checkpoint (or a
// directory without config.json: the caller loaded the config some other way).
absl::StatusOr<std::optional<SpqrQuantizationInfo>> ReadQuantizationConfig(
    const Checkpoint& checkpoint) {
  const std::filesystem::path path = std::filesystem::path(checkpoint.dir()) / "config.json";
  std::ifstream in(path, std::ios::binary);
  if (!in) return std::optional<SpqrQuantizationInfo>();
  std::stringstream text;
  text << in.rdbuf();
  return ParseSpqrQuantizationConfig(text.str(), path.string());
}

// A tensor of layer >= num_hidden_layers means config.json and the weights disagree (a config
// of a smaller model next to bigger weights); running would silently drop layers.
absl::Status CheckNoExtraLayers(const Checkpoint& checkpoint, const ModelConfig& config) {
  for (const std::string& name : checkpoint.Names()) {
    absl::string_view rest = name;
    if (!absl::ConsumePrefix(&rest, "model.layers.")) continue;
    const size_t dot = rest.find('.');
    int64_t layer = 0;
    if (dot == absl::string_view::npos || !absl::SimpleAtoi(rest.substr(0, dot), &layer)) continue;
    if (layer >= config.num_hidden_layers) {
      return absl::InvalidArgumentError(
          absl::StrCat("tensor '", name, "' in ", checkpoint.dir(), " belongs to layer ", layer,
                       " but the config has num_hidden_layers=", config.num_hidden_layers));
    }
  }
  return absl::OkStatus();
}

}  // namespace

absl::StatusOr<std::shared_ptr<const LlamaWeights>> BindLlamaWeights(
    std::shared_ptr<const Checkpoint> checkpoint, const ModelConfig& config) {
  if (checkpoint == nullptr) return absl::InvalidArgumentError("BindLlamaWeights: no checkpoint");
  ASSIGN_OR_RETURN(const std::optional<SpqrQuantizationInfo> quantization,
                   ReadQuantizationConfig(*checkpoint));
  // Corruption anywhere in a shard is reported before any tensor is interpreted.
  if (quantization) RETURN_IF_ERROR(VerifyShardChecksums(*checkpoint, *quantization));
  Binder bind(*checkpoint, quantization ? &*quantization : nullptr);
  const int64_t hidden = config.hidden_size;
  const int64_t q_dim = config.num_attention_heads * config.head_dim;
  const int64_t kv_dim = config.num_key_value_heads * config.head_dim;
  const int64_t inter = config.intermediate_size;
  const bool bias = config.attention_bias;

  auto weights = std::make_shared<LlamaWeights>();
  weights->config = config;
  ASSIGN_OR_RETURN(weights->embed_tokens,
                   bind.Tensor("model.embed_tokens.weight", {config.vocab_size, hidden}));
  // num_hidden_layers comes from config.json: layers are appended as their tensors are found
  // (never sized from the number up front), so a huge count fails at the first missing tensor
  // instead of in an allocation.
  for (int64_t i = 0; i < config.num_hidden_layers; ++i) {
    DecoderLayerWeights& layer = weights->layers.emplace_back();
    const std::string p = absl::StrCat("model.layers.", i, ".");
    ASSIGN_OR_RETURN(layer.input_layernorm, bind.Tensor(p + "input_layernorm.weight", {hidden}));
    ASSIGN_OR_RETURN(layer.q_proj, bind.Linear(p + "self_attn.q_proj", q_dim, hidden, bias));
    ASSIGN_OR_RETURN(layer.k_proj, bind.Linear(p + "self_attn.k_proj", kv_dim, hidden, bias));
    ASSIGN_OR_RETURN(layer.v_proj, bind.Linear(p + "self_attn.v_proj", kv_dim, hidden, bias));
    ASSIGN_OR_RETURN(layer.o_proj, bind.Linear(p + "self_attn.o_proj", hidden, q_dim, false));
    ASSIGN_OR_RETURN(layer.post_attention_layernorm,
                     bind.Tensor(p + "post_attention_layernorm.weight", {hidden}));
    ASSIGN_OR_RETURN(layer.gate_proj, bind.Linear(p + "mlp.gate_proj", inter, hidden, false));
    ASSIGN_OR_RETURN(layer.up_proj, bind.Linear(p + "mlp.up_proj", inter, hidden, false));
    ASSIGN_OR_RETURN(layer.down_proj, bind.Linear(p + "mlp.down_proj", hidden, inter, false));
  }
  RETURN_IF_ERROR(CheckNoExtraLayers(*checkpoint, config));
  if (quantization) {
    if (absl::Status st = CheckTotalsMatchQuantizationConfig(*quantization, bind.totals());
        !st.ok()) {
      return absl::InvalidArgumentError(absl::StrCat(checkpoint->dir(), ": ", st.message()));
    }
  }
  ASSIGN_OR_RETURN(weights->norm, bind.Tensor("model.norm.weight", {hidden}));

  // Tied models use the embedding matrix as the output projection, as transformers does even
  // when a (redundant) lm_head.weight is stored.
  weights->lm_head.out_features = config.vocab_size;
  weights->lm_head.in_features = hidden;
  if (config.tie_word_embeddings) {
    weights->lm_head.weight = weights->embed_tokens;
  } else if (checkpoint->Find("lm_head.weight") == nullptr) {
    return absl::NotFoundError(absl::StrCat("tensor 'lm_head.weight' not found in checkpoint ",
                                            checkpoint->dir(),
                                            " and the config does not set tie_word_embeddings"));
  } else {
    ASSIGN_OR_RETURN(weights->lm_head.weight,
                     bind.Tensor("lm_head.weight", {config.vocab_size, hidden}));
  }
  if (absl::Status finite = CheckTensorsFinite(DenseFloatTensors(*weights)); !finite.ok()) {
    return absl::DataLossError(absl::StrCat(checkpoint->dir(), ": ", finite.message()));
  }
  weights->checkpoint = std::move(checkpoint);
  return std::shared_ptr<const LlamaWeights>(std::move(weights));
}

}  // namespace spqr
