#include "quantizer/model_quantizer.h"

#include <omp.h>

#include <Eigen/Core>
#include <array>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <random>
#include <sstream>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "engine/backend/cpu/rope.h"
#include "engine/format/spqr_tensors.h"
#include "engine/model/llama_weights.h"
#include "engine/model/model_config.h"
#include "engine/model/safetensors.h"
#include "engine/tokenizer/tokenizer.h"
#include "engine/util/status_macros.h"
#include "nlohmann/json.hpp"
#include "quantizer/block_forward.h"
#include "quantizer/output_dir.h"
#include "quantizer/safetensors_writer.h"

namespace spqr {
namespace fs = std::filesystem;
namespace {

constexpr char kQuantizerVersion[] = "spqr-serve-quantizer 0.1.0";
// Which Hessian (BlockHessians slot) feeds each of the seven projections.
constexpr int kHessianOf[7] = {0, 0, 0, 1, 2, 2, 3};

double Seconds(std::chrono::steady_clock::time_point since) {
  return std::chrono::duration<double>(std::chrono::steady_clock::now() - since).count();
}

absl::StatusOr<std::string> ReadFile(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  if (!in) return absl::NotFoundError(absl::StrCat("cannot read '", path, "'"));
  std::stringstream ss;
  ss << in.rdbuf();
  return ss.str();
}

absl::Status WriteTextFile(const std::string& path, const std::string& text) {
  std::ofstream out(path, std::ios::binary);
  out << text;
  out.flush();
  if (!out) return absl::DataLossError(absl::StrCat("cannot write '", path, "'"));
  return absl::OkStatus();
}

absl::StatusOr<uint32_t> FileCrc32(const std::string& path) {
  ASSIGN_OR_RETURN(std::string bytes, ReadFile(path));
  return Crc32(bytes.data(), bytes.size());
}

// Checks the layer configuration against every projection shape before any work is done.
absl::Status ValidateAgainstModel(const SpqrLayerConfig& cfg, const LlamaWeights& w) {
  if (w.layers.empty()) return absl::InvalidArgumentError("the model has no decoder layers");
  const DecoderLayerWeights& l = w.layers[0];
  const LinearTensors* all[7] = {&l.q_proj,    &l.k_proj,  &l.v_proj,   &l.o_proj,
                                 &l.gate_proj, &l.up_proj, &l.down_proj};
  for (int i = 0; i < 7; ++i) {
    absl::Status st = ValidateLayerConfig(cfg, all[i]->out_features, all[i]->in_features);
    if (!st.ok()) {
      return absl::InvalidArgumentError(absl::StrCat("layer ", kBlockLinearNames[i], " [",
                                                     all[i]->out_features, " x ",
                                                     all[i]->in_features, "]: ", st.message()));
    }
  }
  return absl::OkStatus();
}

// Removes a directory when the job returns early (error or interruption) unless released.
struct RemoveOnExit {
  std::string path;
  ~RemoveOnExit() {
    if (path.empty()) return;
    std::error_code ec;
    fs::remove_all(path, ec);
  }
};

double Norm2(const std::vector<float>& a, const std::vector<float>* b) {
  double s = 0.0;
  for (size_t i = 0; i < a.size(); ++i) {
    const double d = a[i] - (b ? (*b)[i] : 0.0f);
    s += d * d;
  }
  return s;
}

}  // namespace

int64_t PeakRssBytes() {
  std::ifstream in("/proc/self/status");
  std::string line;
  while (std::getline(in, line)) {
    if (line.rfind("VmHWM:", 0) == 0) return std::stoll(line.substr(6)) * 1024;
  }
  return 0;
}

absl::Status ValidateJobOptions(const ModelQuantizeJob& job) {
  if (job.nsamples < 1 || job.nsamples > kMaxCalibrationWindows) {
    return absl::InvalidArgumentError(
        absl::StrCat("nsamples must be in 1..", kMaxCalibrationWindows, ", got ", job.nsamples));
  }
  if (job.seqlen < 2 || job.seqlen > kMaxCalibrationSeqlen) {
    return absl::InvalidArgumentError(
        absl::StrCat("seqlen must be in 2..", kMaxCalibrationSeqlen, ", got ", job.seqlen));
  }
  if (job.threads < 0 || job.threads > kMaxThreads) {
    return absl::InvalidArgumentError(
        absl::StrCat("threads must be in 0..", kMaxThreads, " (0 = all cores), got ", job.threads));
  }
  return ValidateLayerOptions(job.layer);
}

absl::StatusOr<ModelQuantizeReport> QuantizeModel(const ModelQuantizeJob& job,
                                                  const ProgressFn& progress) {
  const auto start = std::chrono::steady_clock::now();
  RETURN_IF_ERROR(ValidateJobOptions(job));
  RETURN_IF_ERROR(
      CheckOutputDirectory(job.model_dir, job.output_dir, job.calibration_text, job.force));
  // Set by the caller's signal handler; checked between calibration windows and layers.
  const auto stopped = [&job] { return job.stop != nullptr && job.stop->load() != 0; };
  std::string tmp;
  const auto interrupted = [&] {
    return absl::CancelledError(absl::StrCat("interrupted by signal ", job.stop->load(),
                                             tmp.empty() ? "" : "; the temporary directory '", tmp,
                                             tmp.empty() ? "" : "' is removed",
                                             " and nothing was written to '", job.output_dir, "'"));
  };
  ASSIGN_OR_RETURN(ModelConfig config, LoadModelConfig(job.model_dir));
  if (config.model_type != "llama" && config.model_type != "mistral" &&
      config.model_type != "qwen2") {
    return absl::InvalidArgumentError(
        absl::StrCat("unsupported architecture '", config.model_type, "' in ", job.model_dir,
                     "/config.json (supported: llama, mistral, qwen2)"));
  }
  ASSIGN_OR_RETURN(std::unique_ptr<Checkpoint> opened, Checkpoint::Open(job.model_dir));
  std::shared_ptr<const Checkpoint> checkpoint(std::move(opened));
  ASSIGN_OR_RETURN(std::shared_ptr<const LlamaWeights> weights,
                   BindLlamaWeights(checkpoint, config));
  RETURN_IF_ERROR(ValidateAgainstModel(job.layer, *weights));
  const int threads = job.threads;

  // Calibration windows.
  ASSIGN_OR_RETURN(std::unique_ptr<Tokenizer> tokenizer,
                   OpenModelTokenizer(job.model_dir, config.bos_token_id, config.eos_token_ids));
  ASSIGN_OR_RETURN(std::string text, ReadFile(job.calibration_text));
  const std::vector<int32_t> ids = tokenizer->Encode(text, /*add_bos=*/false);
  const int64_t needed = static_cast<int64_t>(job.nsamples) * job.seqlen;
  if (static_cast<int64_t>(ids.size()) < needed) {
    return absl::InvalidArgumentError(absl::StrCat(
        "calibration text '", job.calibration_text, "' has ", ids.size(),
        " tokens; nsamples*seqlen = ", job.nsamples, "*", job.seqlen, " = ", needed, " needed"));
  }
  std::mt19937_64 rng(job.seed);
  const int64_t hidden = config.hidden_size, tokens = needed;
  std::vector<float> x(static_cast<size_t>(tokens * hidden));
  for (int s = 0; s < job.nsamples; ++s) {
    const uint64_t span = ids.size() - job.seqlen + 1;
    const int64_t begin = static_cast<int64_t>(rng() % span);
    for (int t = 0; t < job.seqlen; ++t) {
      const int32_t id = ids[begin + t];
      TensorView row = weights->embed_tokens;
      row.shape = {hidden};
      row.data = static_cast<const uint8_t*>(row.data) + id * hidden * DTypeSize(row.dtype);
      row.nbytes = hidden * DTypeSize(row.dtype);
      const std::vector<float> e = TensorToF32(row);
      std::copy(e.begin(), e.end(),
                x.begin() + (static_cast<int64_t>(s) * job.seqlen + t) * hidden);
    }
  }
  const std::vector<float> inv_freq =
      cpu::ComputeRopeInvFreq(config.head_dim, config.rope_theta, config.rope_scaling);
  if (stopped()) return interrupted();

  // Everything is written under a fresh temporary name, removed on any early return, and renamed
  // at the end.
  ASSIGN_OR_RETURN(tmp, CreateTemporaryOutput(job.output_dir));
  RemoveOnExit remove_tmp{tmp};
  std::error_code ec;
  const int64_t blocks = static_cast<int64_t>(weights->layers.size());
  const int64_t shards = blocks + 1;
  auto shard_name = [&](int64_t i) {
    return absl::StrFormat("model-%05d-of-%05d.safetensors", i + 1, shards);
  };
  nlohmann::ordered_json weight_map = nlohmann::ordered_json::object();
  nlohmann::ordered_json shard_crc = nlohmann::ordered_json::object();
  ModelQuantizeReport report;
  report.calibration_tokens = tokens;
  int64_t payload_bytes = 0;
  double formula_weighted = 0.0;
  std::vector<float> y_fp(x.size()), y_q(x.size());

  // Parallel over windows, panels of H and layers, with every Eigen product serial (Eigen's own
  // threading syncs twice per GEMM, which on a busy machine costs more than it gains, and its
  // results depend on the thread count): the output is the same for every --threads, equal to a
  // run with one thread.
  const int workers = threads > 0 ? threads : omp_get_max_threads();
  // Restored at the end; 0 (follow OpenMP, Eigen's default) when it matched OpenMP's count.
  const int saved_eigen_threads =
      Eigen::nbThreads() == omp_get_max_threads() ? 0 : Eigen::nbThreads();
  Eigen::setNbThreads(1);
  struct RestoreEigenThreads {
    int n;
    ~RestoreEigenThreads() { Eigen::setNbThreads(n); }
  } restore_eigen_threads{saved_eigen_threads};
  std::vector<BlockForwardScratch> scratch(static_cast<size_t>(workers));
  // One window's inputs of the four Hessian groups per worker (QuantizeModel's window chunk).
  std::vector<std::array<std::vector<float>, 4>> captured(static_cast<size_t>(workers));

  for (int64_t bi = 0; bi < blocks; ++bi) {
    const auto block_start = std::chrono::steady_clock::now();
    const DecoderLayerWeights& lw = weights->layers[bi];
    DenseBlock block = LoadDenseBlock(lw);
    const int64_t attn_width = config.num_attention_heads * config.head_dim;
    HessianAccumulator h0(hidden), h1(attn_width), h2(hidden), h3(config.intermediate_size);
    HessianAccumulator* hs[4] = {&h0, &h1, &h2, &h3};
    // Calibration forward in chunks of `workers` windows, one per thread, then their inputs are
    // added to H in window order (AddBatches: bitwise the serial AddBatch sequence).
    for (int s0 = 0; s0 < job.nsamples; s0 += workers) {
      if (stopped()) return interrupted();
      const int chunk = std::min(workers, job.nsamples - s0);
#pragma omp parallel for num_threads(chunk) schedule(static, 1)
      for (int i = 0; i < chunk; ++i) {
        BlockHessians hooks;
        for (int a = 0; a < 4; ++a) hooks.captures[a] = &captured[i][a];
        const int64_t off = static_cast<int64_t>(s0 + i) * job.seqlen * hidden;
        BlockForward(block, config, inv_freq.data(), x.data() + off, job.seqlen, y_fp.data() + off,
                     &hooks, /*threads=*/1, &scratch[i]);
      }
      for (int a = 0; a < 4; ++a) {
        std::vector<const float*> inputs;
        for (int i = 0; i < chunk; ++i) inputs.push_back(captured[i][a].data());
        hs[a]->AddBatches(inputs, job.seqlen, workers);
      }
    }
    const double forward_seconds = Seconds(block_start);
    const auto layers_start = std::chrono::steady_clock::now();
    // The seven layers are independent given their Hessians: one per thread, serial inside,
    // largest first (down_proj, gate, up, then the attention projections) to balance the threads.
    if (stopped()) return interrupted();
    constexpr int kLayerOrder[7] = {6, 4, 5, 0, 3, 1, 2};
    std::vector<absl::StatusOr<LayerQuantizationResult>> results(7);
    double layer_seconds[7] = {};
    SpqrLayerConfig layer_config = job.layer;
    layer_config.stop = job.stop;
#pragma omp parallel for num_threads(std::min(workers, 7)) schedule(dynamic, 1)
    for (int k = 0; k < 7; ++k) {
      const int li = kLayerOrder[k];
      const auto layer_start = std::chrono::steady_clock::now();
      const DenseLinear& dl = block.linears[li];
      results[li] = QuantizeLayer(dl.weight.data(), dl.out_features, dl.in_features,
                                  hs[kHessianOf[li]]->matrix().data(), layer_config,
                                  /*threads=*/1);
      layer_seconds[li] = Seconds(layer_start);
    }
    if (stopped()) return interrupted();
    std::vector<OwnedTensor> owned;
    for (int li = 0; li < 7; ++li) {
      DenseLinear& dl = block.linears[li];
      const std::string prefix = absl::StrCat("model.layers.", bi, ".", kBlockLinearNames[li]);
      absl::StatusOr<LayerQuantizationResult>& res = results[li];
      if (!res.ok()) {
        return absl::Status(res.status().code(),
                            absl::StrCat(prefix, ": ", res.status().message()));
      }
      dl.weight = std::move(res->dequantized);
      for (OwnedTensor& t : SpqrLayerToTensors(res->packed, prefix)) owned.push_back(std::move(t));
      LayerReport lr;
      lr.name = prefix;
      lr.out_features = dl.out_features;
      lr.in_features = dl.in_features;
      lr.outliers = res->num_outliers;
      lr.outlier_share = res->outlier_fraction;
      lr.formula_bits = res->formula_bits;
      lr.real_bits = res->real_bits;
      lr.relative_hessian_error = res->relative_hessian_error;
      lr.seconds = layer_seconds[li];
      const int64_t params = dl.out_features * dl.in_features;
      report.quantized_parameters += params;
      report.outliers += lr.outliers;
      payload_bytes += SpqrLayerPayloadBytes(res->packed);
      formula_weighted += lr.formula_bits * static_cast<double>(params);
      report.layers.push_back(lr);
      if (progress) {
        const double done = (static_cast<double>(bi) + (li + 1) / 8.0) / blocks;
        const double elapsed = Seconds(start);
        progress(nlohmann::json({{"event", "layer"},
                                 {"block", bi + 1},
                                 {"blocks", blocks},
                                 {"layer", prefix},
                                 {"outliers", lr.outliers},
                                 {"relative_hessian_error", lr.relative_hessian_error},
                                 {"elapsed_s", elapsed},
                                 {"eta_s", elapsed / done * (1.0 - done)}})
                     .dump());
      }
    }
    const double layers_seconds = Seconds(layers_start);
    const auto next_start = std::chrono::steady_clock::now();
    // Next block's inputs come from this block with quantized weights (windows in parallel).
    if (stopped()) return interrupted();
#pragma omp parallel for num_threads(workers) schedule(dynamic, 1)
    for (int s = 0; s < job.nsamples; ++s) {
      if (stopped()) continue;  // a signal skips the remaining windows
      const int64_t off = static_cast<int64_t>(s) * job.seqlen * hidden;
      BlockForward(block, config, inv_freq.data(), x.data() + off, job.seqlen, y_q.data() + off,
                   nullptr, /*threads=*/1, &scratch[omp_get_thread_num()]);
    }
    if (stopped()) return interrupted();
    BlockReport br;
    br.index = static_cast<int>(bi);
    const double ref = Norm2(y_fp, nullptr);
    br.relative_output_error = ref > 0 ? std::sqrt(Norm2(y_q, &y_fp) / ref) : 0.0;
    br.seconds = Seconds(block_start);
    br.forward_seconds = forward_seconds;
    br.layers_seconds = layers_seconds;
    br.next_inputs_seconds = Seconds(next_start);
    report.blocks.push_back(br);
    std::swap(x, y_q);
    // Shard bi + 1: this block's norms, biases and SpQR layers.
    std::vector<TensorView> views;
    const std::string p = absl::StrCat("model.layers.", bi, ".");
    TensorView in_norm = lw.input_layernorm, post_norm = lw.post_attention_layernorm;
    in_norm.name = p + "input_layernorm.weight";
    post_norm.name = p + "post_attention_layernorm.weight";
    views.push_back(in_norm);
    views.push_back(post_norm);
    const LinearTensors* lin[7] = {&lw.q_proj,    &lw.k_proj,  &lw.v_proj,   &lw.o_proj,
                                   &lw.gate_proj, &lw.up_proj, &lw.down_proj};
    for (int li = 0; li < 7; ++li) {
      if (lin[li]->bias) {
        TensorView b = *lin[li]->bias;
        b.name = p + kBlockLinearNames[li] + ".bias";
        views.push_back(b);
      }
    }
    for (const OwnedTensor& t : owned) views.push_back(ViewOf(t));
    const std::string file = shard_name(bi + 1);
    RETURN_IF_ERROR(WriteSafetensors(tmp + "/" + file, views, {{"format", "pt"}}));
    for (const TensorView& v : views) weight_map[v.name] = file;
    ASSIGN_OR_RETURN(uint32_t crc, FileCrc32(tmp + "/" + file));
    shard_crc[file] = crc;
    if (progress) {
      const double elapsed = Seconds(start);
      const double done = static_cast<double>(bi + 1) / blocks;
      progress(nlohmann::json({{"event", "block"},
                               {"block", bi + 1},
                               {"blocks", blocks},
                               {"relative_output_error", br.relative_output_error},
                               {"block_s", br.seconds},
                               {"forward_s", br.forward_seconds},
                               {"layers_s", br.layers_seconds},
                               {"next_inputs_s", br.next_inputs_seconds},
                               {"elapsed_s", elapsed},
                               {"eta_s", elapsed / done * (1.0 - done)}})
                   .dump());
    }
  }
  // Shard 0: embeddings, final norm, lm_head in their stored 16-bit form.
  {
    std::vector<TensorView> views;
    TensorView embed = weights->embed_tokens, norm = weights->norm;
    embed.name = "model.embed_tokens.weight";
    norm.name = "model.norm.weight";
    views.push_back(embed);
    views.push_back(norm);
    if (!config.tie_word_embeddings) {
      TensorView head = weights->lm_head.weight;
      head.name = "lm_head.weight";
      views.push_back(head);
    }
    const std::string file = shard_name(0);
    RETURN_IF_ERROR(WriteSafetensors(tmp + "/" + file, views, {{"format", "pt"}}));
    for (const TensorView& v : views) weight_map[v.name] = file;
    ASSIGN_OR_RETURN(uint32_t crc, FileCrc32(tmp + "/" + file));
    shard_crc[file] = crc;
  }
  report.real_bits = 8.0 * static_cast<double>(payload_bytes) / report.quantized_parameters;
  report.formula_bits = formula_weighted / static_cast<double>(report.quantized_parameters);

  // config.json with the quantization_config block, index, tokenizer, reports.
  ASSIGN_OR_RETURN(std::string config_text, ReadFile(job.model_dir + "/config.json"));
  nlohmann::ordered_json cfg = nlohmann::ordered_json::parse(config_text, nullptr, false);
  if (cfg.is_discarded()) return absl::InvalidArgumentError("config.json is not valid JSON");
  const SpqrLayerConfig& lc = job.layer;
  nlohmann::ordered_json qc = {
      {"quant_method", "spqr"},
      {"format", "spqr-format"},
      {"format_version", kSpqrFormatVersion},
      {"method", MethodName(lc.method)},
      {"wbits", lc.wbits},
      {"beta1", lc.beta1},
      {"beta2", lc.beta2},
      {"stats_bits", lc.stats_bits},
      {"tau", std::isfinite(lc.tau) ? nlohmann::ordered_json(lc.tau) : nlohmann::ordered_json()},
      {"lambda", lc.lambda},
      {"act_order", lc.act_order},
      {"avg_bits_formula", report.formula_bits},
      {"avg_bits_real", report.real_bits},
      {"outlier_share", static_cast<double>(report.outliers) / report.quantized_parameters},
      {"quantizer_version", kQuantizerVersion},
      {"calibration",
       {{"file", fs::path(job.calibration_text).filename().string()},
        {"nsamples", job.nsamples},
        {"seqlen", job.seqlen},
        {"seed", job.seed}}},
      {"shard_crc32", shard_crc}};
  cfg["quantization_config"] = qc;
  RETURN_IF_ERROR(WriteTextFile(tmp + "/config.json", cfg.dump(2) + "\n"));
  nlohmann::ordered_json index = {{"metadata", {{"format", "spqr-format 1"}}},
                                  {"weight_map", weight_map}};
  RETURN_IF_ERROR(WriteTextFile(tmp + "/model.safetensors.index.json", index.dump(2) + "\n"));
  for (const char* name : {"tokenizer.model", "tokenizer.json", "special_tokens_map.json",
                           "generation_config.json", "tokenizer_config.json"}) {
    const fs::path src = fs::path(job.model_dir) / name;
    if (fs::exists(src)) {
      fs::copy_file(src, fs::path(tmp) / name, fs::copy_options::overwrite_existing, ec);
      if (ec)
        return absl::DataLossError(absl::StrCat("cannot copy ", src.string(), ": ", ec.message()));
    }
  }
  report.wall_seconds = Seconds(start);
  report.peak_rss_bytes = PeakRssBytes();
  RETURN_IF_ERROR(WriteTextFile(tmp + "/quantization_report.json", report.ToJson() + "\n"));
  RETURN_IF_ERROR(WriteTextFile(tmp + "/quantization_report.txt", report.ToText()));
  RETURN_IF_ERROR(
      WriteTextFile(tmp + "/" + kOutputMarker, OutputMarkerJson(kQuantizerVersion, job.model_dir)));
  if (stopped()) return interrupted();
  const absl::Status published = PublishOutput(tmp, job.output_dir, job.force);
  // Published, or kept because the destination changed under us (the message names it).
  if (published.ok() || published.code() == absl::StatusCode::kFailedPrecondition) {
    remove_tmp.path.clear();
  }
  RETURN_IF_ERROR(published);
  return report;
}

std::string ModelQuantizeReport::ToJson() const {
  nlohmann::ordered_json j;
  j["quantized_parameters"] = quantized_parameters;
  j["outliers"] = outliers;
  j["outlier_share"] =
      quantized_parameters > 0 ? static_cast<double>(outliers) / quantized_parameters : 0.0;
  j["avg_bits_formula"] = formula_bits;
  j["avg_bits_real"] = real_bits;
  j["calibration_tokens"] = calibration_tokens;
  j["wall_seconds"] = wall_seconds;
  j["peak_rss_bytes"] = peak_rss_bytes;
  j["layers"] = nlohmann::ordered_json::array();
  for (const LayerReport& l : layers) {
    j["layers"].push_back({{"name", l.name},
                           {"shape", {l.out_features, l.in_features}},
                           {"outliers", l.outliers},
                           {"outlier_share", l.outlier_share},
                           {"bits_formula", l.formula_bits},
                           {"bits_real", l.real_bits},
                           {"relative_hessian_error", l.relative_hessian_error},
                           {"seconds", l.seconds}});
  }
  j["blocks"] = nlohmann::ordered_json::array();
  for (const BlockReport& b : blocks) {
    j["blocks"].push_back({{"index", b.index},
                           {"relative_output_error", b.relative_output_error},
                           {"seconds", b.seconds},
                           {"forward_seconds", b.forward_seconds},
                           {"layers_seconds", b.layers_seconds},
                           {"next_inputs_seconds", b.next_inputs_seconds}});
  }
  return j.dump(2);
}

std::string ModelQuantizeReport::ToText() const {
  std::string s = absl::StrFormat("%-40s %13s %8s %7s %6s %6s %9s\n", "layer", "shape", "outliers",
                                  "share%", "bits", "real", "rel.Herr");
  for (const LayerReport& l : layers) {
    absl::StrAppendFormat(&s, "%-40s %6d x %-5d %8d %7.3f %6.3f %6.3f %9.2e\n", l.name,
                          l.out_features, l.in_features, l.outliers, 100.0 * l.outlier_share,
                          l.formula_bits, l.real_bits, l.relative_hessian_error);
  }
  for (const BlockReport& b : blocks) {
    absl::StrAppendFormat(&s,
                          "block %d: relative output error %.4f (%.1f s: calibration forward and "
                          "Hessians %.1f, layers %.1f, next inputs %.1f)\n",
                          b.index, b.relative_output_error, b.seconds, b.forward_seconds,
                          b.layers_seconds, b.next_inputs_seconds);
  }
  absl::StrAppendFormat(
      &s,
      "total: %d parameters, %d outliers (%.3f%%), %.3f bits/param (formula), "
      "%.3f bits/param (real), %d calibration tokens, %.1f s, peak RSS %.1f MiB\n",
      quantized_parameters, outliers,
      quantized_parameters ? 100.0 * outliers / quantized_parameters : 0.0, formula_bits, real_bits,
      calibration_tokens, wall_seconds, peak_rss_bytes / 1048576.0);
  return s;
}

}  // namespace spqr
