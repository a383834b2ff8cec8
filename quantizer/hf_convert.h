// spqr-convert: imports a transformers SpQR checkpoint (config.json quantization_config with
// quant_method "spqr", bits/beta1/beta2/shapes; per projection dense_weights, row_offsets,
// col_vals, in_perm; docs/model-format.md section 11) into an spqr-format 1 model directory that
// spqr-server and spqr-eval load.
#pragma once

#include <cstdint>
#include <string>

#include "absl/status/statusor.h"

namespace spqr {

struct HfConvertReport {
  int64_t layers = 0;      // projections imported
  int64_t parameters = 0;  // their m x n, summed
  int64_t outliers = 0;
  double avg_bits_real = 0.0;
  double seconds = 0.0;
};

// Converts `input_dir` into `output_dir`. The decoder projections (model.layers.N.{self_attn.
// q,k,v,o_proj, mlp.gate,up,down_proj}) are imported with ImportHfSpqrLayer and written as
// spqr-format 1 layers (one shard per decoder layer); every other tensor (embeddings, norms,
// lm_head, biases) is copied unchanged (shard 0); config.json is copied with its
// quantization_config replaced by ours (imported_from "transformers-spqr", tau null); the
// tokenizer files are copied. An unknown or unused tensor, a dense decoder projection, or a
// quantization_config other than bits 3 / beta1 16 / beta2 16 is an error naming it; the
// config's `shapes` entries, when present, must match the tensors. The output directory follows
// spqr-quantize's rules (never the input, replaced only with `force` when it is an earlier
// output; written to a temporary directory and renamed).
absl::StatusOr<HfConvertReport> ConvertHfSpqrModel(const std::string& input_dir,
                                                   const std::string& output_dir, bool force);

}  // namespace spqr
