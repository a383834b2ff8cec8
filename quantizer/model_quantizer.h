// The offline job: quantizes every decoder-block linear layer of a LLaMA-family checkpoint with
// SpQR / GPTQ / RTN, block by block on calibration activations produced by the already quantized
// blocks, and writes a self-contained SpQR model directory (docs/model-format.md).
#pragma once

#include <atomic>
#include <cstdint>
#include <functional>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "quantizer/spqr_layer_quantizer.h"

namespace spqr {

struct ModelQuantizeJob {
  std::string model_dir;  // HF checkpoint directory the engine can load
  // Created (via a temporary sibling renamed at the end). May exist only as an empty directory,
  // or, with `force`, as an earlier spqr-quantize output (quantizer/output_dir.h); never as, in
  // or around the model directory.
  std::string output_dir;
  bool force = false;
  std::string calibration_text;  // path of a UTF-8 text file
  int nsamples = 128;            // calibration windows, 1..kMaxCalibrationWindows
  int seqlen = 2048;             // tokens per window, 2..kMaxCalibrationSeqlen
  uint64_t seed = 0;             // window draw
  SpqrLayerConfig layer;         // applied to every linear layer of every block
  // 0 = all cores, else 1..kMaxThreads. The output does not depend on it: windows, panels of H
  // and layers run in parallel, every product inside serially (equal to a one-thread run).
  int threads = 0;
  // When set and it becomes non-zero (a signal number, from a signal handler), the job stops at
  // its next check (between calibration windows, layers and a layer's column blocks), removes its
  // temporary directory and returns CANCELLED.
  const std::atomic<int>* stop = nullptr;
};

inline constexpr int kMaxCalibrationWindows = 1 << 20;
inline constexpr int kMaxCalibrationSeqlen = 1 << 20;
inline constexpr int kMaxThreads = 1024;

// Checks every number of `job` (nsamples, seqlen, threads and the layer options) against its
// valid range, before anything is loaded; errors name the option, the value and the range.
absl::Status ValidateJobOptions(const ModelQuantizeJob& job);

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
  // Its parts: the fp forward over the calibration windows with the Hessians, the seven layers,
  // and the forward with the quantized layers that makes the next block's inputs.
  double forward_seconds = 0.0, layers_seconds = 0.0, next_inputs_seconds = 0.0;
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
