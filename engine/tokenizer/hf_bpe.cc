#include "engine/tokenizer/hf_bpe.h"

#include <cstdio>
#include <queue>

#include "absl/strings/str_cat.h"
#include "engine/tokenizer/utf8.h"

namespace spqr {
namespace {

constexpr size_t kCacheCapacity = 1 << 16;  // words
constexpr size_t kCacheMaxWordBytes = 256;  // longer words are not cached (as tokenizers does)

uint64_t PairKey(int32_t a, int32_t b) {
  return (static_cast<uint64_t>(static_cast<uint32_t>(a)) << 32) | static_cast<uint32_t>(b);
}

absl::Status NotSupported(const char* field) {
  return absl::UnimplementedError(
      absl::StrCat("BPE model: \"", field, "\" is set, which is not supported"));
}

}  // namespace

absl::StatusOr<std::unique_ptr<HfBpe>> HfBpe::Parse(const nlohmann::json& model) {
  std::unique_ptr<HfBpe> bpe(new HfBpe());
  if (!model.contains("vocab") || !model["vocab"].is_object()) {
    return absl::InvalidArgumentError("BPE model: \"vocab\" is not an object");
  }
  for (const auto& [token, id] : model["vocab"].items()) {
    if (!id.is_number_integer() || id.get<int64_t>() < 0 || id.get<int64_t>() >= (1 << 30)) {
      return absl::InvalidArgumentError(
          absl::StrCat("BPE model: vocab entry \"", token, "\" has no valid id"));
    }
    const int32_t i = id.get<int32_t>();
    bpe->vocab_[token] = i;
    if (static_cast<size_t>(i) >= bpe->id_to_token_.size()) {
      bpe->id_to_token_.resize(i + 1);
      bpe->has_id_.resize(i + 1, false);
    }
    bpe->id_to_token_[i] = token;
    bpe->has_id_[i] = true;
  }
  for (const char* field : {"continuing_subword_prefix", "end_of_word_suffix"}) {
    if (model.contains(field) && !model[field].is_null() &&
        !(model[field].is_string() && model[field].get<std::string>().empty())) {
      return NotSupported(field);
    }
  }
  if (model.contains("dropout") && model["dropout"].is_number() &&
      model["dropout"].get<double>() > 0.0) {
    return NotSupported("dropout");
  }
  bpe->fuse_unk_ = model.value("fuse_unk", false);
  bpe->byte_fallback_ = model.value("byte_fallback", false);
  bpe->ignore_merges_ = model.value("ignore_merges", false);
  if (model.contains("unk_token") && model["unk_token"].is_string()) {
    const std::string unk = model["unk_token"].get<std::string>();
    bpe->unk_id_ = bpe->TokenToId(unk);
    if (bpe->unk_id_ < 0) {
      return absl::InvalidArgumentError(
          absl::StrCat("BPE model: unk_token \"", unk, "\" is not in the vocab"));
    }
  }
  for (int b = 0; b < 256; ++b) {
    char name[8];
    std::snprintf(name, sizeof(name), "<0x%02X>", b);
    bpe->byte_ids_[b] = bpe->TokenToId(name);
  }

  if (!model.contains("merges") || !model["merges"].is_array()) {
    return absl::InvalidArgumentError("BPE model: \"merges\" is not an array");
  }
  uint32_t rank = 0;
  for (const nlohmann::json& merge : model["merges"]) {
    std::string left, right;
    if (merge.is_string()) {
      const std::string s = merge.get<std::string>();
      const size_t space = s.find(' ');
      if (space == std::string::npos || s.find(' ', space + 1) != std::string::npos) {
        return absl::InvalidArgumentError(
            absl::StrCat("BPE model: merge \"", s, "\" is not two tokens separated by a space"));
      }
      left = s.substr(0, space);
      right = s.substr(space + 1);
    } else if (merge.is_array() && merge.size() == 2 && merge[0].is_string() &&
               merge[1].is_string()) {
      left = merge[0].get<std::string>();
      right = merge[1].get<std::string>();
    } else {
      return absl::InvalidArgumentError(
          absl::StrCat("BPE model: merge ", rank, " is neither \"a b\" nor [\"a\", \"b\"]"));
    }
    const int32_t a = bpe->TokenToId(left), b = bpe->TokenToId(right);
    const int32_t merged = bpe->TokenToId(left + right);
    if (a < 0 || b < 0 || merged < 0) {
      return absl::InvalidArgumentError(absl::StrCat("BPE model: merge \"", left, " ", right,
                                                     "\" uses a token that is not in the vocab"));
    }
    // A repeated pair keeps its last rank, like tokenizers' HashMap collect.
    bpe->merges_[PairKey(a, b)] = {rank++, merged};
  }
  return bpe;
}

const std::string* HfBpe::IdToToken(int32_t id) const {
  if (id < 0 || id >= id_limit() || !has_id_[id]) return nullptr;
  return &id_to_token_[id];
}

int32_t HfBpe::TokenToId(std::string_view token) const {
  const auto it = vocab_.find(token);
  return it == vocab_.end() ? -1 : it->second;
}

void HfBpe::Tokenize(std::string_view word, std::vector<int32_t>* ids) const {
  if (word.empty()) return;
  if (ignore_merges_) {
    if (const int32_t id = TokenToId(word); id >= 0) {
      ids->push_back(id);
      return;
    }
  }
  const bool cacheable = word.size() <= kCacheMaxWordBytes;
  if (cacheable) {
    std::lock_guard<std::mutex> lock(cache_mu_);
    if (const auto it = cache_.find(word); it != cache_.end()) {
      ids->insert(ids->end(), it->second.begin(), it->second.end());
      return;
    }
  }
  std::vector<int32_t> merged;
  Merge(word, &merged);
  ids->insert(ids->end(), merged.begin(), merged.end());
  if (cacheable) {
    std::lock_guard<std::mutex> lock(cache_mu_);
    if (cache_.size() < kCacheCapacity) cache_.emplace(std::string(word), std::move(merged));
  }
}

void HfBpe::Merge(std::string_view word, std::vector<int32_t>* ids) const {
  struct Symbol {
    int32_t id;
    int32_t prev, next;
    bool removed;
  };
  std::vector<Symbol> symbols;
  symbols.reserve(word.size());
  const auto add = [&](int32_t id) {
    const int32_t index = static_cast<int32_t>(symbols.size());
    if (index > 0) symbols.back().next = index;
    symbols.push_back({id, index - 1, -1, false});
  };
  // Characters to initial symbols (model.rs merge_word).
  int32_t pending_unk = -1;  // an unk not yet added (fuse_unk merges a run into one)
  for (size_t pos = 0, len = 0; pos < word.size(); pos += len) {
    len = utf8::CharLen(static_cast<unsigned char>(word[pos]));
    const std::string_view ch = word.substr(pos, len);
    if (const int32_t id = TokenToId(ch); id >= 0) {
      if (pending_unk >= 0) add(pending_unk);
      pending_unk = -1;
      add(id);
      continue;
    }
    if (byte_fallback_) {
      bool all = true;
      for (char c : ch) all &= byte_ids_[static_cast<unsigned char>(c)] >= 0;
      if (all) {
        // tokenizers does not flush a pending unk here: it is added after these bytes.
        for (char c : ch) add(byte_ids_[static_cast<unsigned char>(c)]);
        continue;
      }
    }
    if (unk_id_ >= 0) {
      if (pending_unk >= 0 && !fuse_unk_) add(pending_unk);
      pending_unk = unk_id_;
    }
    // No unk token: the character is dropped, as tokenizers does.
  }
  if (pending_unk >= 0) add(pending_unk);

  struct Candidate {
    uint32_t rank;
    int32_t pos;
    int32_t new_id;
    bool operator<(const Candidate& o) const {  // a min-heap on (rank, pos)
      return rank != o.rank ? rank > o.rank : pos > o.pos;
    }
  };
  std::priority_queue<Candidate> queue;
  const auto lookup = [&](int32_t a, int32_t b) -> const std::pair<uint32_t, int32_t>* {
    const auto it = merges_.find(PairKey(a, b));
    return it == merges_.end() ? nullptr : &it->second;
  };
  for (size_t i = 0; i + 1 < symbols.size(); ++i) {
    if (const auto* m = lookup(symbols[i].id, symbols[i + 1].id)) {
      queue.push({m->first, static_cast<int32_t>(i), m->second});
    }
  }
  while (!queue.empty()) {
    const Candidate top = queue.top();
    queue.pop();
    Symbol& left = symbols[top.pos];
    if (left.removed || left.next < 0) continue;
    const int32_t right_pos = left.next;
    const Symbol right = symbols[right_pos];
    const auto* current = lookup(left.id, right.id);
    if (current == nullptr || current->second != top.new_id) continue;  // a stale entry
    left.id = top.new_id;
    left.next = right.next;
    symbols[right_pos].removed = true;
    if (right.next >= 0) symbols[right.next].prev = top.pos;
    if (left.prev >= 0) {
      if (const auto* m = lookup(symbols[left.prev].id, left.id)) {
        queue.push({m->first, left.prev, m->second});
      }
    }
    if (left.next >= 0) {
      if (const auto* m = lookup(left.id, symbols[left.next].id)) {
        queue.push({m->first, top.pos, m->second});
      }
    }
  }
  for (const Symbol& s : symbols) {
    if (!s.removed) ids->push_back(s.id);
  }
}

}  // namespace spqr
