// Memory-mapped safetensors files and multi-shard checkpoints.
#pragma once

#include <map>
#include <memory>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "engine/model/tensor.h"

namespace spqr {

// One memory-mapped .safetensors file. The header is validated completely at Open(): JSON syntax,
// dtypes, shapes vs byte ranges, ranges inside the file and not overlapping. Views stay valid as
// long as the SafetensorsFile lives.
class SafetensorsFile {
 public:
  static absl::StatusOr<std::unique_ptr<SafetensorsFile>> Open(const std::string& path);
  ~SafetensorsFile();
  SafetensorsFile(const SafetensorsFile&) = delete;
  SafetensorsFile& operator=(const SafetensorsFile&) = delete;

  const std::string& path() const { return path_; }
  // nullptr when absent.
  const TensorView* Find(const std::string& name) const;
  std::vector<std::string> Names() const;
  // The "__metadata__" string map of the header (may be empty).
  const std::map<std::string, std::string>& metadata() const { return metadata_; }
  // The whole mapped file (for checksums).
  const void* mapped_data() const { return map_; }
  size_t mapped_size() const { return size_; }

 private:
  SafetensorsFile() = default;
  std::string path_;
  void* map_ = nullptr;
  size_t size_ = 0;
  std::map<std::string, TensorView> tensors_;
  std::map<std::string, std::string> metadata_;
};

// A checkpoint directory: model.safetensors, or model.safetensors.index.json plus its shards.
class Checkpoint {
 public:
  static absl::StatusOr<std::unique_ptr<Checkpoint>> Open(const std::string& dir);

  const std::string& dir() const { return dir_; }
  // nullptr when absent.
  const TensorView* Find(const std::string& name) const;
  // NOT_FOUND naming the tensor and the directory when absent.
  absl::StatusOr<const TensorView*> Require(const std::string& name) const;
  std::vector<std::string> Names() const;
  const std::vector<std::unique_ptr<SafetensorsFile>>& files() const { return files_; }

 private:
  std::string dir_;
  std::vector<std::unique_ptr<SafetensorsFile>> files_;
  std::map<std::string, const TensorView*> index_;
};

}  // namespace spqr
