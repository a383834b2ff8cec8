// The offline job: quantizes every decoder-block linear layer of a LLaMA-family checkpoint with
// SpQR / GPTQ / RTN, block by block on calibration activations produced by the already quantized
// blocks, and writes a self-contained SpQR model directory (docs/model-format.md).
#pragma once

#include <cstdint>
#include <functional>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "quantizer/spqr_layer_quantizer.h"

namespace spqr {

struct ModelQuantizeJob {
  std::string model_dir;   // HF checkpoint directory the engine can load
  std::string output_dir;  // created; must not exist unless `force`
  bool force = false;
  std::string calibration_text;  // path of a UTF-8 text file
  int nsamples = 128;            // calibration windows
  int seqlen = 2048;             // tokens per window
  uint64_t seed = 0;             // window draw
  SpqrLayerConfig layer;         // applied to every linear layer of every block
  int threads = 0;               // 0 = all cores
};

struct LayerReport {
  std::string name;
  int64_t out_features = 0, in_features = 0;
  int64_t outliers = 0;
  double outlier_share = 0.0;
  double formula_bits = 0.0, real_bits = 0.0;
  double relative_hessian_error = 0.0;
  double seconds = 0.0;
};

struct BlockReport {
  int index = 0;
  double relative_output_error = 0.0;  // ||Y_quantized - Y_fp|| / ||Y_fp|| over calibration
  double seconds = 0.0;
};

struct ModelQuantizeReport {
  std::vector<LayerReport> layers;
  std::vector<BlockReport> blocks;
  int64_t quantized_parameters = 0;
  int64_t outliers = 0;
  double formula_bits = 0.0;  // parameter-weighted mean of the layers' paper-formula bits
  double real_bits = 0.0;     // payload bytes * 8 / quantized parameters
  int64_t calibration_tokens = 0;
  double wall_seconds = 0.0;
  int64_t peak_rss_bytes = 0;
  std::string ToJson() const;
  std::string ToText() const;
};

// Called after every layer and block with a one-line JSON progress record.
using ProgressFn = std::function<void(const std::string& json_line)>;

absl::StatusOr<ModelQuantizeReport> QuantizeModel(const ModelQuantizeJob& job,
                                                  const ProgressFn& progress);

// Peak resident set size of this process (VmHWM), 0 when unknown.
int64_t PeakRssBytes();

}  // namespace spqr
