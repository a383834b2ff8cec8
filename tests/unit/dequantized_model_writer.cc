#include "tests/unit/dequantized_model_writer.h"

#include <cstring>
#include <deque>
#include <filesystem>
#include <vector>

#include "absl/strings/match.h"
#include "engine/format/spqr_layer.h"
#include "engine/format/spqr_tensors.h"
#include "engine/model/safetensors.h"
#include "quantizer/safetensors_writer.h"

namespace spqr {

absl::Status WriteDequantizedModel(const std::string& spqr_dir, const std::string& source_dir,
                                   const std::string& dense_dir, bool drop_outliers,
                                   int64_t* dropped) {
  namespace fs = std::filesystem;
  fs::create_directories(dense_dir);
  for (const char* f : {"config.json", "generation_config.json", "tokenizer.model"}) {
    fs::copy_file(fs::path(source_dir) / f, fs::path(dense_dir) / f,
                  fs::copy_options::overwrite_existing);
  }
  auto checkpoint = Checkpoint::Open(spqr_dir);
  if (!checkpoint.ok()) return checkpoint.status();
  const TensorLookup lookup = [&](const std::string& n) { return (*checkpoint)->Find(n); };
  std::vector<TensorView> views;
  std::deque<OwnedTensor> owned;  // views point into it: elements must not move
  int64_t dropped_count = 0;
  for (const std::string& name : (*checkpoint)->Names()) {
    const size_t at = name.find(".spqr_");
    if (at == std::string::npos) {
      views.push_back(*(*checkpoint)->Find(name));
      continue;
    }
    if (!absl::EndsWith(name, ".spqr_meta")) continue;
    const std::string prefix = name.substr(0, at);
    auto layer = SpqrLayerFromTensors(lookup, prefix);
    if (!layer.ok()) return layer.status();
    if (drop_outliers) {
      dropped_count += layer->num_outliers();
      layer->outlier_row_offsets.assign(layer->outlier_row_offsets.size(), 0);
      layer->outlier_cols_u16.clear();
      layer->outlier_cols_u32.clear();
      layer->outlier_values.clear();
    }
    auto dense = DequantizeSpqrLayer(*layer);
    if (!dense.ok()) return dense.status();
    OwnedTensor t;
    t.name = prefix + ".weight";
    t.dtype = DType::kF32;
    t.shape = {layer->out_features, layer->in_features};
    t.bytes.resize(dense->size() * sizeof(float));
    std::memcpy(t.bytes.data(), dense->data(), t.bytes.size());
    owned.push_back(std::move(t));
    views.push_back(ViewOf(owned.back()));
  }
  if (dropped != nullptr) *dropped = dropped_count;
  return WriteSafetensors(dense_dir + "/model.safetensors", views, {});
}

}  // namespace spqr
