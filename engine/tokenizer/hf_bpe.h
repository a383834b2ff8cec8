// The BPE model of tokenizer.json ("model": {"type": "BPE", ...}): vocab, ranked merges (given
// as "a b" strings or ["a", "b"] pairs), unk token (optionally fused), byte fallback ("<0xXX>"
// tokens for characters outside the vocabulary) and ignore_merges (a word that is a vocab entry
// is one token). Merging is a port of tokenizers' Word::merge_all: the lowest-ranked adjacent
// pair first, the leftmost among equals. dropout, continuing_subword_prefix and
// end_of_word_suffix are load errors.
#pragma once

#include <cstdint>
#include <functional>
#include <memory>
#include <mutex>
#include <string>
#include <string_view>
#include <unordered_map>
#include <vector>

#include "absl/status/statusor.h"
#include "nlohmann/json.hpp"

namespace spqr {

class HfBpe {
 public:
  static absl::StatusOr<std::unique_ptr<HfBpe>> Parse(const nlohmann::json& model);

  // Appends the ids of one pre-tokenized word (valid UTF-8). Thread-safe (a bounded cache of
  // recent words is shared under a mutex).
  void Tokenize(std::string_view word, std::vector<int32_t>* ids) const;

  // The vocab entry of an id, or nullptr.
  const std::string* IdToToken(int32_t id) const;
  // The id of a vocab entry, or -1.
  int32_t TokenToId(std::string_view token) const;
  // One more than the largest id of the vocab.
  int32_t id_limit() const { return static_cast<int32_t>(id_to_token_.size()); }
  bool byte_fallback() const { return byte_fallback_; }

 private:
  HfBpe() = default;
  void Merge(std::string_view word, std::vector<int32_t>* ids) const;

  // Transparent hashing: lookups by string_view without a copy.
  struct Hash {
    using is_transparent = void;
    size_t operator()(std::string_view s) const { return std::hash<std::string_view>()(s); }
  };
  std::unordered_map<std::string, int32_t, Hash, std::equal_to<>> vocab_;
  std::vector<std::string> id_to_token_;  // "" for ids the vocab skips
  std::vector<bool> has_id_;
  // (left id, right id) -> (rank, merged id).
  std::unordered_map<uint64_t, std::pair<uint32_t, int32_t>> merges_;
  int32_t unk_id_ = -1;
  bool fuse_unk_ = false;
  bool byte_fallback_ = false;
  bool ignore_merges_ = false;
  int32_t byte_ids_[256];  // "<0xXX>" ids, -1 when absent

  mutable std::mutex cache_mu_;
  mutable std::unordered_map<std::string, std::vector<int32_t>, Hash, std::equal_to<>> cache_;
};

}  // namespace spqr
