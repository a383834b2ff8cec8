// Hand-damaging copies of model directories for the load-time refusal tests: overwrite bytes of
// one tensor in place, edit config.json, and re-record the shard CRC-32s of an SpQR directory so
// that a damage gets past the checksum to the check under test.
#pragma once

#include <cstdint>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <sstream>
#include <string>

#include "engine/format/spqr_tensors.h"
#include "engine/model/safetensors.h"
#include "gtest/gtest.h"
#include "nlohmann/json.hpp"

namespace spqr::damage {

inline std::string Slurp(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  std::stringstream ss;
  ss << in.rdbuf();
  return ss.str();
}
inline void Spit(const std::string& path, const std::string& text) {
  std::ofstream out(path, std::ios::binary | std::ios::trunc);
  out << text;
}

// The shard of `dir` that stores `tensor`, and the tensor's byte offset in that file.
struct Location {
  std::string file;
  size_t offset = 0;
  size_t nbytes = 0;
};
inline Location Locate(const std::string& dir, const std::string& tensor) {
  for (const auto& e : std::filesystem::directory_iterator(dir)) {
    if (e.path().extension() != ".safetensors") continue;
    auto f = SafetensorsFile::Open(e.path().string());
    EXPECT_TRUE(f.ok()) << f.status();
    if (!f.ok()) continue;
    if (const TensorView* v = (*f)->Find(tensor)) {
      return {e.path().string(),
              static_cast<size_t>(static_cast<const uint8_t*>(v->data) -
                                  static_cast<const uint8_t*>((*f)->mapped_data())),
              v->nbytes};
    }
  }
  ADD_FAILURE() << "tensor " << tensor << " not found in " << dir;
  return {};
}

// Overwrites `size` bytes at `byte_offset` inside `tensor`'s data.
inline void PatchTensor(const std::string& dir, const std::string& tensor, size_t byte_offset,
                        const void* bytes, size_t size) {
  const Location at = Locate(dir, tensor);
  ASSERT_LE(byte_offset + size, at.nbytes) << tensor;
  std::string file = Slurp(at.file);
  std::memcpy(file.data() + at.offset + byte_offset, bytes, size);
  Spit(at.file, file);
}

// Reads, edits and writes back config.json (key order kept).
template <typename Edit>
void EditConfig(const std::string& dir, Edit edit) {
  nlohmann::ordered_json cfg = nlohmann::ordered_json::parse(Slurp(dir + "/config.json"));
  edit(cfg);
  Spit(dir + "/config.json", cfg.dump(2) + "\n");
}

// Re-records quantization_config.shard_crc32 from the files as they are now.
inline void RefreshShardCrcs(const std::string& dir) {
  EditConfig(dir, [&](nlohmann::ordered_json& cfg) {
    for (auto& [file, crc] : cfg["quantization_config"]["shard_crc32"].items()) {
      const std::string bytes = Slurp(dir + "/" + file);
      crc = Crc32(bytes.data(), bytes.size());
    }
  });
}

}  // namespace spqr::damage
