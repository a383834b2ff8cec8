// SpqrServiceImpl::GetModelInfo and the request limits it reports (split from spqr_service.cc:
// the static description of the loaded model and the serving limits).
#include <algorithm>
#include <string>

#include "server/model_info.h"
#include "server/request_parsing.h"
#include "server/spqr_service.h"

namespace spqr {

void FillQuantization(const QuantizationInfo& info, v1::Quantization* out) {
  out->Clear();
  out->set_method(info.method);
  out->set_weight_dtype(info.weight_dtype);
  out->set_format_version(info.format_version);
  out->set_bits_per_param_formula(info.bits_per_param_formula);
  out->set_bits_per_param_real(info.bits_per_param_real);
  out->set_wbits(info.wbits);
  out->set_beta1(info.beta1);
  out->set_beta2(info.beta2);
  out->set_stats_bits(info.stats_bits);
  out->set_outlier_share(info.outlier_share);
  out->set_tau(info.tau);
  out->set_hessian_damping(info.lambda);
  out->set_act_order(info.act_order);
  out->set_quantizer_version(info.quantizer_version);
  out->set_calibration(info.calibration);
}

RequestLimits ResolveRequestLimits(const ServerConfig& config, const Engine& engine) {
  const LoadedModel& model = engine.model();
  const EngineStats stats = engine.GetStats();
  RequestLimits limits;
  limits.vocab_size = static_cast<int32_t>(model.config.vocab_size);
  int64_t context = model.config.max_position_embeddings;
  // A sequence cannot hold more tokens than the whole KV pool.
  const int64_t pool_tokens = static_cast<int64_t>(stats.kv_blocks_total) * stats.kv_block_size;
  if (pool_tokens > 0) context = std::min(context, pool_tokens);
  limits.max_context_tokens = static_cast<int32_t>(context);
  limits.max_prompt_tokens =
      config.limits.max_prompt_tokens > 0
          ? std::min(config.limits.max_prompt_tokens, limits.max_context_tokens)
          : limits.max_context_tokens;
  limits.max_new_tokens = std::min(config.limits.max_new_tokens, limits.max_context_tokens);
  limits.default_max_new_tokens =
      std::min(config.limits.default_max_new_tokens, limits.max_new_tokens);
  limits.max_stop_strings = config.limits.max_stop_strings;
  limits.max_stop_string_bytes = config.limits.max_stop_string_bytes;
  limits.max_top_logprobs = std::min<int32_t>(config.limits.max_top_logprobs, limits.vocab_size);
  limits.max_score_pairs = config.limits.max_score_pairs;
  if (model.tokenizer != nullptr) {
    limits.max_piece_bytes = model.tokenizer->max_piece_bytes();
    limits.max_prompt_bytes = int64_t{limits.max_prompt_tokens} * limits.max_piece_bytes;
  }
  return limits;
}

grpc::ServerUnaryReactor* SpqrServiceImpl::GetModelInfo(grpc::CallbackServerContext* context,
                                                        const grpc::ByteBuffer* raw_request,
                                                        grpc::ByteBuffer* raw_response) {
  grpc::ServerUnaryReactor* reactor = context->DefaultReactor();
  v1::GetModelInfoRequest request;
  if (grpc::Status status = ParseAndAdmit(context, "GetModelInfo", *raw_request, &request);
      !status.ok()) {
    metrics_->RecordRpc("GetModelInfo", GrpcCodeName(status.error_code()));
    reactor->Finish(status);
    return reactor;
  }
  // Read after Admit, which found it set (it is never reset while calls can arrive).
  Engine* engine = engine_.load();
  v1::ModelInfo info;
  v1::ModelInfo* const response = &info;
  const LoadedModel& model = engine->model();
  const ModelConfig& c = model.config;
  response->set_model_dir(model.dir);
  std::string name = model.dir;
  while (name.size() > 1 && name.back() == '/') name.pop_back();
  response->set_model_name(name.substr(name.find_last_of('/') + 1));
  v1::ModelArchitecture* arch = response->mutable_architecture();
  arch->set_model_type(c.model_type);
  arch->set_vocab_size(c.vocab_size);
  arch->set_hidden_size(c.hidden_size);
  arch->set_intermediate_size(c.intermediate_size);
  arch->set_num_hidden_layers(c.num_hidden_layers);
  arch->set_num_attention_heads(c.num_attention_heads);
  arch->set_num_key_value_heads(c.num_key_value_heads);
  arch->set_head_dim(c.head_dim);
  arch->set_max_position_embeddings(c.max_position_embeddings);
  arch->set_rope_theta(c.rope_theta);
  arch->set_rms_norm_eps(c.rms_norm_eps);
  arch->set_tie_word_embeddings(c.tie_word_embeddings);
  arch->set_attention_bias(c.attention_bias);
  arch->set_torch_dtype(c.torch_dtype);
  FillQuantization(model.quantization, response->mutable_quantization());
  response->set_bos_token_id(model.tokenizer ? model.tokenizer->bos_id() : c.bos_token_id);
  if (model.tokenizer) {
    for (int32_t id : model.tokenizer->eos_ids()) response->add_eos_token_ids(id);
  }
  response->set_backend(model.backend ? model.backend->name() : "");
  const EngineStats stats = engine->GetStats();
  const EngineOptions& options = engine->options();
  v1::ServingLimits* limits = response->mutable_limits();
  limits->set_max_context_tokens(limits_.max_context_tokens);
  limits->set_max_prompt_tokens(limits_.max_prompt_tokens);
  limits->set_max_new_tokens(limits_.max_new_tokens);
  limits->set_default_max_new_tokens(limits_.default_max_new_tokens);
  limits->set_max_stop_strings(limits_.max_stop_strings);
  limits->set_max_stop_string_bytes(limits_.max_stop_string_bytes);
  limits->set_max_top_logprobs(limits_.max_top_logprobs);
  limits->set_max_score_pairs(limits_.max_score_pairs);
  limits->set_kv_block_size(stats.kv_block_size > 0 ? stats.kv_block_size : options.kv_block_size);
  limits->set_kv_blocks_total(stats.kv_blocks_total);
  limits->set_max_running_requests(options.max_running_requests);
  limits->set_max_batched_tokens(options.max_batched_tokens);
  limits->set_max_queued_requests(options.max_queued_requests);
  limits->set_prefix_caching(options.enable_prefix_caching);
  limits->set_max_message_bytes(static_cast<int32_t>(config_.server.max_message_bytes));
  limits->set_max_prompt_bytes(limits_.max_prompt_bytes);
  response->set_server_version(SPQR_SERVER_VERSION);
  response->set_tokenizer_kind(model.tokenizer ? model.tokenizer->kind() : "");
  response->set_has_chat_template(model.chat.chat_template.has_value());
  *raw_response = SerializeResponse(info);
  metrics_->RecordRpc("GetModelInfo", "OK");
  reactor->Finish(grpc::Status::OK);
  return reactor;
}

}  // namespace spqr
