// The CUDA backend end to end on the CPU harness (docs/cuda-harness.md), against the CPU backend:
// the committed test model and models/reference (dense bf16), and the test model quantized to
// SpQR at test time, give the same greedy tokens for single prompts (whole-prompt prefill, then
// decode) and for a batch of 8 sequences with chunked prefill mixed with decode rows, over block
// tables that are not contiguous. Also: the KV pool is refused beyond the device's free memory,
// a tied lm_head is uploaded once, and a sticky CUDA error breaks the backend for good.
//
// Tolerances. The CPU backend multiplies fp32 activations by the 16-bit weights converted to
// fp32; the CUDA backend rounds the activations to the weights' dtype for cuBLAS (fp32
// accumulation), as a GPU deployment does: bf16 (relative 2^-9) for the dense bf16 models, fp16
// (2^-12) where SpQR layers are dequantized for cuBLAS, none in the SpQR decode kernel. That
// rounding dominates: logits (magnitudes ~1..20) agree to kDenseLogitTol / kSpqrLogitTol absolute
// (measured maxima: 0.044 test model, 0.015 reference, 0.010 SpQR test model). Greedy tokens must
// be equal in every row. The harness is deterministic, so this is a fixed outcome, not a chance
// one; rows where the CPU's best logit leads the second by less than 2 x the tolerance are
// near-ties that a legitimate rounding change could flip: the failure message shows the lead.
#include "engine/backend/cuda/cuda_backend.h"

#include <algorithm>
#include <cmath>
#include <filesystem>
#include <fstream>
#include <memory>
#include <numeric>
#include <random>
#include <sstream>
#include <string>
#include <vector>

#include "engine/backend/cpu/cpu_backend.h"
#include "engine/backend/cuda/emu/harness.h"
#include "engine/model/llama_weights.h"
#include "engine/model/model_config.h"
#include "engine/model/safetensors.h"
#include "engine/tokenizer/tokenizer.h"
#include "engine/util/half.h"
#include "gtest/gtest.h"
#include "quantizer/model_quantizer.h"

namespace spqr {
namespace {
namespace fs = std::filesystem;

constexpr float kDenseLogitTol = 0.08f;
constexpr float kSpqrLogitTol = 0.02f;

std::string kTestModelDirForTokens() {
  return std::string(SPQR_SOURCE_DIR) + "/tests/data/test-model";
}

std::shared_ptr<const LlamaWeights> Load(const std::string& dir) {
  absl::StatusOr<ModelConfig> config = LoadModelConfig(dir);
  EXPECT_TRUE(config.ok()) << config.status();
  absl::StatusOr<std::unique_ptr<Checkpoint>> ckpt = Checkpoint::Open(dir);
  EXPECT_TRUE(ckpt.ok()) << ckpt.status();
  if (!config.ok() || !ckpt.ok()) return nullptr;
  auto w = BindLlamaWeights(std::shared_ptr<const Checkpoint>(std::move(*ckpt)), *config);
  EXPECT_TRUE(w.ok()) << w.status();
  return w.ok() ? *w : nullptr;
}

// The start of the calibration text as token ids: prompts are slices of real text (on random ids
// these small models have flat logits, where a near-tie decides the greedy token).
std::vector<int32_t> TextTokens(const LlamaWeights& w) {
  auto tok = OpenModelTokenizer(kTestModelDirForTokens(), w.config.bos_token_id, {});
  EXPECT_TRUE(tok.ok()) << tok.status();
  std::ifstream in(std::string(SPQR_SOURCE_DIR) + "/tools/test_model_text.txt");
  std::stringstream text;
  text << in.rdbuf();
  std::vector<int32_t> ids =
      tok.ok() ? (*tok)->Encode(text.str().substr(0, 4000), false) : std::vector<int32_t>();
  for (int32_t& id : ids) id = std::min<int32_t>(id, w.config.vocab_size - 1);
  EXPECT_GT(ids.size(), 300u);
  return ids;
}

struct Pair {
  std::unique_ptr<Backend> cpu, cuda;
};

Pair Create(std::shared_ptr<const LlamaWeights> w, KvPoolShape pool) {
  Pair p;
  CpuBackendOptions cpu_options;
  cpu_options.num_threads = 1;
  cpu_options.spqr_kernel = SpqrCpuKernel::kExact;
  cpu_options.dense_kernel = DenseCpuKernel::kExact;
  auto cpu = CreateCpuBackend(w, cpu_options);
  EXPECT_TRUE(cpu.ok()) << cpu.status();
  auto cuda = CreateCudaBackend(w, CudaBackendOptions{});
  EXPECT_TRUE(cuda.ok()) << cuda.status();
  if (!cpu.ok() || !cuda.ok()) return p;
  p.cpu = *std::move(cpu);
  p.cuda = *std::move(cuda);
  EXPECT_TRUE(p.cpu->AllocateKvPool(pool).ok());
  EXPECT_TRUE(p.cuda->AllocateKvPool(pool).ok());
  return p;
}

// What a comparison of the two backends' logits found.
struct Agreement {
  float tol = 0.0f;
  int rows = 0;
  int near_ties = 0;      // CPU lead below 2 tol
  int differing = 0;      // rows whose greedy tokens differ
  float max_diff = 0.0f;  // max |cpu - cuda| over every logit
};

// Runs `plan` on both backends; returns the CPU's greedy token per logit row, and checks the
// CUDA backend's logits and tokens against it.
std::vector<int32_t> StepBoth(Pair& p, const StepPlan& plan, Agreement* a) {
  StepOutput cpu_out, cuda_out;
  const absl::Status cs = p.cpu->Forward(plan, &cpu_out);
  const absl::Status gs = p.cuda->Forward(plan, &cuda_out);
  EXPECT_TRUE(cs.ok()) << cs;
  EXPECT_TRUE(gs.ok()) << gs;
  std::vector<int32_t> tokens;
  if (!cs.ok() || !gs.ok() || cpu_out.logits.size() != cuda_out.logits.size()) {
    ADD_FAILURE() << "no comparable output";
    return tokens;
  }
  const int64_t v = cpu_out.vocab_size;
  for (size_t r = 0; r * v < cpu_out.logits.size(); ++r) {
    const float* c = cpu_out.row(r);
    const float* g = cuda_out.row(r);
    for (int64_t i = 0; i < v; ++i) {
      const float d = std::abs(c[i] - g[i]);
      if (!(d <= a->max_diff)) a->max_diff = std::isfinite(d) ? d : INFINITY;
    }
    const int32_t best = static_cast<int32_t>(std::max_element(c, c + v) - c);
    const int32_t cuda_best = static_cast<int32_t>(std::max_element(g, g + v) - g);
    float second = -INFINITY;
    for (int64_t i = 0; i < v; ++i) {
      if (i != best) second = std::max(second, c[i]);
    }
    ++a->rows;
    a->differing += cuda_best != best;
    a->near_ties += c[best] - second < 2 * a->tol;
    EXPECT_EQ(cuda_best, best) << "row " << r << ": the CPU's best logit leads by "
                               << c[best] - second;
    tokens.push_back(best);
  }
  return tokens;
}

void ExpectAgreement(const Agreement& a, const char* what) {
  SCOPED_TRACE(what);
  EXPECT_GT(a.rows, 0);
  EXPECT_LE(a.max_diff, a.tol);
  std::printf("[%s] %d logit rows, max |cpu - cuda| = %.3g, near-ties %d, tokens differ in %d\n",
              what, a.rows, a.max_diff, a.near_ties, a.differing);
}

// Single prompts: whole-prompt prefill, then `decode` greedy steps, one sequence at a time.
void SinglePrompts(Pair& p, const std::vector<int32_t>& text, int decode, float tol,
                   const char* what) {
  constexpr int32_t kBlock = 4;
  Agreement a;
  a.tol = tol;
  for (int len : {1, 5, 13}) {
    const std::vector<int32_t> tokens(text.begin() + 20 * len, text.begin() + 21 * len);
    // Blocks in reverse order: the table is not contiguous.
    std::vector<int32_t> table(16);
    std::iota(table.rbegin(), table.rend(), 0);
    int32_t start = 0;
    std::vector<int32_t> chunk = tokens;
    for (int step = 0; step <= decode; ++step) {
      StepPlan plan;
      plan.seqs.push_back({chunk, start, table, 1});
      const std::vector<int32_t> next = StepBoth(p, plan, &a);
      if (next.size() != 1) return;
      start += static_cast<int32_t>(chunk.size());
      chunk = {next[0]};
    }
    ASSERT_LE(start, 16 * kBlock);
  }
  ExpectAgreement(a, what);
}

// 8 sequences with prompts of different lengths, prefilled in chunks of at most `chunk` tokens
// per sequence and step while others already decode, until each has `decode` new tokens.
void ChunkedBatch(Pair& p, const std::vector<int32_t>& text, int decode, float tol,
                  const char* what) {
  constexpr int32_t kBlock = 4, kBlocksPerSeq = 10, kChunk = 5;
  struct Seq {
    std::vector<int32_t> tokens;  // prompt, then generated tokens
    int32_t cached = 0;
    int32_t prompt = 0;
    std::vector<int32_t> table;
  };
  std::mt19937 rng(17);
  std::vector<int32_t> free_blocks(8 * kBlocksPerSeq);
  std::iota(free_blocks.begin(), free_blocks.end(), 0);
  std::shuffle(free_blocks.begin(), free_blocks.end(), rng);
  std::vector<Seq> seqs(8);
  for (int s = 0; s < 8; ++s) {
    seqs[s].prompt = 2 + 3 * s;  // 2..23 tokens
    seqs[s].tokens.assign(text.begin() + 29 * s, text.begin() + 29 * s + seqs[s].prompt);
    seqs[s].table.assign(free_blocks.begin() + s * kBlocksPerSeq,
                         free_blocks.begin() + (s + 1) * kBlocksPerSeq);
  }
  Agreement a;
  a.tol = tol;
  for (int step = 0; step < 40; ++step) {
    StepPlan plan;
    std::vector<int> in_plan;
    std::vector<std::vector<int32_t>> chunks;
    chunks.reserve(8);
    for (int s = 0; s < 8; ++s) {
      Seq& q = seqs[s];
      if (static_cast<int>(q.tokens.size()) - q.prompt >= decode) continue;
      const int32_t remaining = static_cast<int32_t>(q.tokens.size()) - q.cached;
      const int32_t n = std::min(remaining, kChunk);
      chunks.emplace_back(q.tokens.begin() + q.cached, q.tokens.begin() + q.cached + n);
      const bool last = n == remaining;
      plan.seqs.push_back({chunks.back(), q.cached, q.table, last ? 1 : 0});
      in_plan.push_back(s);
    }
    if (plan.seqs.empty()) break;
    const std::vector<int32_t> next = StepBoth(p, plan, &a);
    size_t r = 0;
    for (size_t i = 0; i < in_plan.size(); ++i) {
      Seq& q = seqs[in_plan[i]];
      q.cached += static_cast<int32_t>(plan.seqs[i].tokens.size());
      if (plan.seqs[i].num_logits == 1) {
        ASSERT_LT(r, next.size());
        q.tokens.push_back(next[r++]);
      }
    }
  }
  for (const Seq& q : seqs) EXPECT_EQ(static_cast<int>(q.tokens.size()) - q.prompt, decode);
  ExpectAgreement(a, what);
}

const std::string kTestModel = std::string(SPQR_SOURCE_DIR) + "/tests/data/test-model";
const std::string kReference = std::string(SPQR_SOURCE_DIR) + "/models/reference";

TEST(CudaBackendTest, TestModelMatchesCpu) {
  auto w = Load(kTestModel);
  ASSERT_NE(w, nullptr);
  Pair p = Create(w, {80, 4});
  ASSERT_NE(p.cuda, nullptr);
  SinglePrompts(p, TextTokens(*w), 6, kDenseLogitTol, "test-model single");
  ChunkedBatch(p, TextTokens(*w), 4, kDenseLogitTol, "test-model batch of 8");
}

TEST(CudaBackendTest, ReferenceModelMatchesCpu) {
  auto w = Load(kReference);
  ASSERT_NE(w, nullptr);
  Pair p = Create(w, {80, 4});
  ASSERT_NE(p.cuda, nullptr);
  SinglePrompts(p, TextTokens(*w), 3, kDenseLogitTol, "reference single");
  ChunkedBatch(p, TextTokens(*w), 2, kDenseLogitTol, "reference batch of 8");
}

TEST(CudaBackendTest, SpqrTestModelMatchesCpu) {
  const fs::path dir = fs::temp_directory_path() / ("spqr_cuda_be_" + std::to_string(getpid()));
  fs::remove_all(dir);
  ModelQuantizeJob job;
  job.model_dir = kTestModel;
  job.calibration_text = std::string(SPQR_SOURCE_DIR) + "/tools/test_model_text.txt";
  job.output_dir = dir.string();
  job.nsamples = 4;
  job.seqlen = 32;
  job.threads = 1;
  job.layer.tau = 0.2;  // with outliers
  auto report = QuantizeModel(job, nullptr);
  ASSERT_TRUE(report.ok()) << report.status();
  ASSERT_GT(report->outliers, 0);
  auto w = Load(dir.string());
  ASSERT_NE(w, nullptr);
  ASSERT_NE(w->layers[0].q_proj.spqr, nullptr);
  Pair p = Create(w, {80, 4});
  ASSERT_NE(p.cuda, nullptr);
  SinglePrompts(p, TextTokens(*w), 6, kSpqrLogitTol, "spqr test-model single");
  ChunkedBatch(p, TextTokens(*w), 4, kSpqrLogitTol, "spqr test-model batch of 8");
  fs::remove_all(dir);
}

// Host storage for tensors a test makes up (kept alive with the weights that view them).
struct OwnedWeights {
  std::shared_ptr<LlamaWeights> w;
  std::vector<std::vector<float>> storage;
  // `t` replaced by an fp32 copy of its values.
  void ToF32(TensorView& t) {
    std::vector<float>& v = storage.emplace_back(t.numel());
    const uint16_t* h = static_cast<const uint16_t*>(t.data);
    for (int64_t i = 0; i < t.numel(); ++i) {
      v[i] = t.dtype == DType::kBF16  ? Bf16ToF32(h[i])
             : t.dtype == DType::kF16 ? F16ToF32(h[i])
                                      : t.as<float>()[i];
    }
    t.dtype = DType::kF32;
    t.data = v.data();
    t.nbytes = v.size() * sizeof(float);
  }
  // A made-up fp32 bias of `n` values.
  TensorView Bias(int64_t n, std::mt19937& rng, const std::string& name) {
    std::vector<float>& v = storage.emplace_back(n);
    std::normal_distribution<float> dist(0.0f, 0.5f);
    for (float& x : v) x = dist(rng);
    TensorView t;
    t.name = name;
    t.dtype = DType::kF32;
    t.shape = {n};
    t.data = v.data();
    t.nbytes = n * sizeof(float);
    return t;
  }
};

// An fp32 checkpoint stays fp32 on the device (DenseGemm in fp32, no rounding of activations), so
// the two backends differ only in the order of fp32 sums: logits within 1e-4 (measured 6e-6).
TEST(CudaBackendTest, Fp32CheckpointMatchesCpuClosely) {
  auto w = Load(kTestModel);
  ASSERT_NE(w, nullptr);
  OwnedWeights o{std::make_shared<LlamaWeights>(*w), {}};
  o.storage.reserve(64);
  o.ToF32(o.w->embed_tokens);
  o.ToF32(o.w->norm);
  o.ToF32(o.w->lm_head.weight);
  for (DecoderLayerWeights& l : o.w->layers) {
    o.ToF32(l.input_layernorm);
    o.ToF32(l.post_attention_layernorm);
    for (LinearTensors* p :
         {&l.q_proj, &l.k_proj, &l.v_proj, &l.o_proj, &l.gate_proj, &l.up_proj, &l.down_proj}) {
      o.ToF32(p->weight);
    }
  }
  Pair p = Create(o.w, {80, 4});
  ASSERT_NE(p.cuda, nullptr);
  SinglePrompts(p, TextTokens(*w), 4, 1e-4f, "fp32 test-model single");
  ChunkedBatch(p, TextTokens(*w), 2, 1e-4f, "fp32 test-model batch of 8");
}

// q/k/v biases (qwen2, llama with attention_bias): LaunchAddBias after the GEMM.
TEST(CudaBackendTest, AttentionBiasMatchesCpu) {
  auto w = Load(kTestModel);
  ASSERT_NE(w, nullptr);
  OwnedWeights o{std::make_shared<LlamaWeights>(*w), {}};
  o.storage.reserve(64);
  o.w->config.attention_bias = true;
  std::mt19937 rng(23);
  for (DecoderLayerWeights& l : o.w->layers) {
    for (LinearTensors* p : {&l.q_proj, &l.k_proj, &l.v_proj}) {
      p->bias = o.Bias(p->out_features, rng, p->weight.name + ".bias");
    }
  }
  Pair p = Create(o.w, {80, 4});
  ASSERT_NE(p.cuda, nullptr);
  SinglePrompts(p, TextTokens(*w), 4, kDenseLogitTol, "biased test-model single");
}

TEST(CudaBackendTest, KvPoolBeyondFreeDeviceMemoryIsRefused) {
  auto w = Load(kTestModel);
  ASSERT_NE(w, nullptr);
  auto cuda = CreateCudaBackend(w, {});
  ASSERT_TRUE(cuda.ok()) << cuda.status();
  // The harness's device has 4 GiB (SPQR_CUDA_EMU_MEMORY_MB).
  const absl::Status st = (*cuda)->AllocateKvPool({1 << 20, 16});
  EXPECT_EQ(st.code(), absl::StatusCode::kResourceExhausted) << st;
  EXPECT_NE(st.message().find("bytes free on CUDA device 0"), std::string::npos) << st;
  StepOutput out;
  const std::vector<int32_t> tokens = {1};
  const std::vector<int32_t> table = {0};
  StepPlan plan;
  plan.seqs.push_back({tokens, 0, table, 1});
  EXPECT_EQ((*cuda)->Forward(plan, &out).code(), absl::StatusCode::kFailedPrecondition);
  ASSERT_TRUE((*cuda)->AllocateKvPool({4, 16}).ok());
  EXPECT_TRUE((*cuda)->Forward(plan, &out).ok());
  const BackendMemoryStats m = (*cuda)->memory_stats();
  EXPECT_EQ(m.kv_pool_bytes, 4 * 16 * (*cuda)->KvBytesPerToken());
  EXPECT_GT(m.device_used_bytes, m.weight_bytes + m.kv_pool_bytes - 1);
  EXPECT_GT(m.device_total_bytes, m.device_used_bytes);
}

TEST(CudaBackendTest, TiedLmHeadIsUploadedOnce) {
  auto w = Load(kTestModel);
  ASSERT_NE(w, nullptr);
  auto tied = std::make_shared<LlamaWeights>(*w);
  tied->config.tie_word_embeddings = true;
  tied->lm_head.weight = tied->embed_tokens;
  auto untied_be = CreateCudaBackend(w, {});
  auto tied_be = CreateCudaBackend(tied, {});
  ASSERT_TRUE(untied_be.ok() && tied_be.ok());
  EXPECT_EQ(
      (*tied_be)->memory_stats().weight_bytes,
      (*untied_be)->memory_stats().weight_bytes - static_cast<int64_t>(w->lm_head.weight.nbytes));
}

TEST(CudaBackendTest, StickyErrorBreaksTheBackendForGood) {
  auto w = Load(kTestModel);
  ASSERT_NE(w, nullptr);
  auto cuda = CreateCudaBackend(w, {});
  ASSERT_TRUE(cuda.ok()) << cuda.status();
  ASSERT_TRUE((*cuda)->AllocateKvPool({4, 16}).ok());
  const std::vector<int32_t> tokens = {1, 2, 3};
  const std::vector<int32_t> table = {2};
  StepPlan plan;
  plan.seqs.push_back({tokens, 0, table, 1});
  StepOutput out;
  ASSERT_TRUE((*cuda)->Forward(plan, &out).ok());
  EXPECT_TRUE((*cuda)->health().ok());

  emu::InjectStickyError(cudaErrorIllegalAddress);
  const absl::Status first = (*cuda)->Forward(plan, &out);
  emu::ClearStickyError();  // the device works again; the backend must not believe it
  EXPECT_EQ(first.code(), absl::StatusCode::kInternal) << first;
  EXPECT_NE(first.message().find("CUDA op "), std::string::npos) << first;
  EXPECT_NE(first.message().find("cudaErrorIllegalAddress"), std::string::npos) << first;
  const absl::Status health = (*cuda)->health();
  EXPECT_EQ(health.code(), absl::StatusCode::kInternal);
  EXPECT_NE(health.message().find("sticky"), std::string::npos) << health;
  EXPECT_EQ((*cuda)->Forward(plan, &out), health);
  EXPECT_EQ((*cuda)->AllocateKvPool({4, 16}), health);
}

}  // namespace
}  // namespace spqr
