// Runs the engine's CPU backend (or, with --backend cuda in a CUDA build, the CUDA backend) on a
// checkpoint directory and writes the logits of every token of
// a sequence as a float32 .npy file [tokens, vocab], for comparison with
// tools/reference_forward.py.
//
// The first --prompt tokens are prefilled in chunks of --chunk tokens (logits for all of them), the
// rest are fed one decode step at a time (teacher forcing), all through the paged KV cache with a
// small block size and a scrambled block table so paging is exercised.
//
//   spqr-dump-logits --model DIR --tokens 1,2,3,4 --prompt 3 --chunk 2 --out logits.npy
//                    [--spqr-kernel auto|exact|int8] [--dense-kernel auto|exact|bf16]
//                    [--backend cpu|cuda]
//
// --text STRING replaces --tokens: the model directory's tokenizer (OpenModelTokenizer) encodes it
// with the special tokens its post-processor adds (transformers' `tokenizer(text)`), and
// --ids-out FILE writes those ids as a JSON list (for comparison with transformers' ids).
// --text-file FILE reads the text from a file instead; without --out only the ids are written
// (no weights are loaded).
// --generate N then appends N greedy (argmax) tokens, one decode step each, and prints the
// decoded continuation on stdout (a quick "does this model write sensible text" check); the
// .npy holds the logits of the input tokens only.
#include <algorithm>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <fstream>
#include <iostream>
#include <memory>
#include <sstream>
#include <string>
#include <vector>

#include "absl/strings/numbers.h"
#include "absl/strings/str_split.h"
#include "engine/backend/cpu/cpu_backend.h"
#include "engine/model/llama_weights.h"
#include "engine/model/model_config.h"
#include "engine/model/safetensors.h"
#include "engine/tokenizer/tokenizer.h"

#if defined(SPQR_WITH_CUDA)
#include "engine/backend/cuda/cuda_backend.h"
#endif

namespace spqr {
namespace {

struct Args {
  std::string model;
  std::vector<int32_t> tokens;
  int prompt = -1;  // default: all tokens
  int chunk = 0;    // default: the whole prompt in one step
  int block_size = 4;
  int threads = 0;
  std::string spqr_kernel = "auto";
  std::string dense_kernel = "auto";
  std::string backend = "cpu";
  std::string out;
  std::string text;
  std::string ids_out;
  int generate = 0;
};

bool ParseArgs(int argc, char** argv, Args* args) {
  for (int i = 1; i + 1 < argc; i += 2) {
    const std::string flag = argv[i];
    const std::string value = argv[i + 1];
    if (flag == "--model") {
      args->model = value;
    } else if (flag == "--out") {
      args->out = value;
    } else if (flag == "--tokens") {
      for (absl::string_view t : absl::StrSplit(value, ',')) {
        int32_t id;
        if (!absl::SimpleAtoi(t, &id)) return false;
        args->tokens.push_back(id);
      }
    } else if (flag == "--prompt") {
      if (!absl::SimpleAtoi(value, &args->prompt)) return false;
    } else if (flag == "--chunk") {
      if (!absl::SimpleAtoi(value, &args->chunk)) return false;
    } else if (flag == "--block-size") {
      if (!absl::SimpleAtoi(value, &args->block_size)) return false;
    } else if (flag == "--text") {
      args->text = value;
    } else if (flag == "--text-file") {
      std::ifstream in(value, std::ios::binary);
      if (!in) return false;
      std::stringstream ss;
      ss << in.rdbuf();
      args->text = ss.str();
    } else if (flag == "--ids-out") {
      args->ids_out = value;
    } else if (flag == "--generate") {
      if (!absl::SimpleAtoi(value, &args->generate) || args->generate < 0) return false;
    } else if (flag == "--spqr-kernel") {
      args->spqr_kernel = value;
    } else if (flag == "--dense-kernel") {
      args->dense_kernel = value;
    } else if (flag == "--backend") {
      if (value != "cpu" && value != "cuda") return false;
      args->backend = value;
    } else if (flag == "--threads") {
      if (!absl::SimpleAtoi(value, &args->threads)) return false;
    } else {
      return false;
    }
  }
  const bool ids_only =
      args->out.empty() && !args->ids_out.empty() && !args->text.empty() && args->generate == 0;
  return !args->model.empty() && (!args->out.empty() || ids_only) &&
         (args->tokens.empty() != args->text.empty()) && args->block_size > 0;
}

bool WriteNpy(const std::string& path, const std::vector<float>& data, int64_t rows, int64_t cols) {
  std::string header = "{'descr': '<f4', 'fortran_order': False, 'shape': (" +
                       std::to_string(rows) + ", " + std::to_string(cols) + "), }";
  // Magic (6) + version (2) + length (2) + header + '\n' padded to a multiple of 64.
  while ((10 + header.size() + 1) % 64 != 0) header += ' ';
  header += '\n';
  FILE* f = std::fopen(path.c_str(), "wb");
  if (f == nullptr) return false;
  const uint16_t len = static_cast<uint16_t>(header.size());
  std::fwrite("\x93NUMPY\x01\x00", 1, 8, f);
  std::fwrite(&len, 2, 1, f);  // little-endian host
  std::fwrite(header.data(), 1, header.size(), f);
  std::fwrite(data.data(), sizeof(float), data.size(), f);
  return std::fclose(f) == 0;
}

int Run(Args args) {
  auto config = LoadModelConfig(args.model);
  if (!config.ok()) {
    std::cerr << config.status() << "\n";
    return 1;
  }
  std::unique_ptr<Tokenizer> tokenizer;
  if (!args.text.empty() || args.generate > 0) {
    auto opened = OpenModelTokenizer(args.model, config->bos_token_id, config->eos_token_ids);
    if (!opened.ok()) {
      std::cerr << opened.status() << "\n";
      return 1;
    }
    tokenizer = *std::move(opened);
  }
  if (!args.text.empty()) {
    args.tokens = tokenizer->Encode(args.text, /*add_bos=*/true);
    if (args.tokens.empty()) {
      std::cerr << "--text encodes to no tokens\n";
      return 1;
    }
  }
  if (!args.ids_out.empty()) {
    FILE* f = std::fopen(args.ids_out.c_str(), "w");
    if (f == nullptr) {
      std::cerr << "cannot write " << args.ids_out << "\n";
      return 1;
    }
    std::string list = "[";
    for (size_t i = 0; i < args.tokens.size(); ++i) {
      list += (i > 0 ? ", " : "") + std::to_string(args.tokens[i]);
    }
    list += "]\n";
    std::fputs(list.c_str(), f);
    if (std::fclose(f) != 0) {
      std::cerr << "cannot write " << args.ids_out << "\n";
      return 1;
    }
  }
  if (args.out.empty()) return 0;  // --ids-out only
  auto checkpoint = Checkpoint::Open(args.model);
  if (!checkpoint.ok()) {
    std::cerr << checkpoint.status() << "\n";
    return 1;
  }
  auto weights = BindLlamaWeights(std::move(*checkpoint), *config);
  if (!weights.ok()) {
    std::cerr << weights.status() << "\n";
    return 1;
  }
  auto kernel = ParseSpqrCpuKernel(args.spqr_kernel);
  if (!kernel.ok()) {
    std::cerr << kernel.status() << "\n";
    return 1;
  }
  auto dense_kernel = ParseDenseCpuKernel(args.dense_kernel);
  if (!dense_kernel.ok()) {
    std::cerr << dense_kernel.status() << "\n";
    return 1;
  }
  absl::StatusOr<std::unique_ptr<Backend>> backend;
  if (args.backend == "cuda") {
#if defined(SPQR_WITH_CUDA)
    backend = CreateCudaBackend(*weights, CudaBackendOptions{});
#else
    backend = absl::FailedPreconditionError("--backend cuda: this build has no CUDA backend");
#endif
  } else {
    CpuBackendOptions options{args.threads};
    options.spqr_kernel = *kernel;
    options.dense_kernel = *dense_kernel;
    backend = CreateCpuBackend(*weights, options);
  }
  if (!backend.ok()) {
    std::cerr << backend.status() << "\n";
    return 1;
  }
  const int n = static_cast<int>(args.tokens.size());
  const int total = n + args.generate;
  const int blocks = (total + args.block_size - 1) / args.block_size;
  // Pool twice as large as needed, blocks used in reverse order with gaps.
  if (absl::Status st = (*backend)->AllocateKvPool({2 * blocks + 1, args.block_size}); !st.ok()) {
    std::cerr << st << "\n";
    return 1;
  }
  std::vector<int32_t> table(blocks);
  for (int b = 0; b < blocks; ++b) table[b] = 2 * (blocks - 1 - b) + 1;

  const int prompt = args.prompt < 0 ? n : std::min(args.prompt, n);
  const int chunk = args.chunk > 0 ? args.chunk : std::max(prompt, 1);
  std::vector<float> logits;
  int64_t vocab = 0;
  for (int pos = 0; pos < n;) {
    const int len = pos < prompt ? std::min(chunk, prompt - pos) : 1;
    StepPlan plan;
    plan.seqs.push_back({std::span<const int32_t>(args.tokens.data() + pos, len), pos, table, len});
    StepOutput out;
    if (absl::Status st = (*backend)->Forward(plan, &out); !st.ok()) {
      std::cerr << st << "\n";
      return 1;
    }
    vocab = out.vocab_size;
    logits.insert(logits.end(), out.logits.begin(), out.logits.end());
    pos += len;
  }
  // Greedy continuation: the argmax of the last position's logits, fed back one step at a time.
  std::vector<int32_t> sequence = args.tokens;
  std::vector<float> last(logits.end() - vocab, logits.end());
  std::vector<int32_t> generated;
  for (int step = 0; step < args.generate; ++step) {
    const int32_t next =
        static_cast<int32_t>(std::max_element(last.begin(), last.end()) - last.begin());
    generated.push_back(next);
    sequence.push_back(next);
    if (step + 1 == args.generate) break;
    StepPlan plan;
    const int pos = static_cast<int>(sequence.size()) - 1;
    plan.seqs.push_back({std::span<const int32_t>(sequence.data() + pos, 1), pos, table, 1});
    StepOutput out;
    if (absl::Status st = (*backend)->Forward(plan, &out); !st.ok()) {
      std::cerr << st << "\n";
      return 1;
    }
    last.assign(out.logits.begin(), out.logits.end());
  }
  if (args.generate > 0) std::cout << tokenizer->Decode(generated) << std::endl;
  if (!WriteNpy(args.out, logits, n, vocab)) {
    std::cerr << "cannot write " << args.out << "\n";
    return 1;
  }
  return 0;
}

}  // namespace
}  // namespace spqr

int main(int argc, char** argv) {
  spqr::Args args;
  if (!spqr::ParseArgs(argc, argv, &args)) {
    std::cerr << "usage: spqr-dump-logits --model DIR (--tokens ID,ID,... | --text STRING | "
                 "--text-file FILE) --out FILE.npy [--ids-out FILE.json] [--generate N] [--prompt "
                 "N] [--chunk N] "
                 "[--block-size N] [--threads N] [--spqr-kernel auto|exact|int8] "
                 "[--dense-kernel auto|exact|bf16] [--backend cpu|cuda]\n";
    return 2;
  }
  return spqr::Run(args);
}
