#include "engine/model/safetensors.h"

#include <fcntl.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstring>
#include <fstream>
#include <set>
#include <sstream>
#include <utility>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "engine/util/status_macros.h"
#include "nlohmann/json.hpp"

namespace spqr {
namespace {

using nlohmann::json;

// Real headers are a few hundred KB even for 100B-parameter models; anything larger is corrupt
// and must not make us parse gigabytes of "JSON".
constexpr uint64_t kMaxHeaderBytes = 100ull << 20;
constexpr char kMetadataKey[] = "__metadata__";
constexpr char kSingleFileName[] = "model.safetensors";
constexpr char kIndexFileName[] = "model.safetensors.index.json";

std::string ShapeString(const std::vector<int64_t>& shape) {
  return absl::StrCat("[", absl::StrJoin(shape, ", "), "]");
}

// The JSON type name for messages ("string", "array", "number", ...).
std::string JsonTypeName(const json& j) { return j.type_name(); }

// Parses one header entry (everything but __metadata__) into `view` (data not yet set) and its
// byte range relative to the data area.
absl::Status ParseTensorEntry(const std::string& path, const std::string& name, const json& entry,
                              uint64_t data_size, TensorView* view, uint64_t* begin,
                              uint64_t* end) {
  auto fail = [&](const std::string& problem) {
    return absl::InvalidArgumentError(absl::StrCat(path, ": tensor '", name, "': ", problem));
  };
  if (!entry.is_object()) {
    return fail(absl::StrCat("header entry must be an object, found ", JsonTypeName(entry)));
  }
  for (const char* key : {"dtype", "shape", "data_offsets"}) {
    if (!entry.contains(key)) return fail(absl::StrCat("missing '", key, "'"));
  }
  const json& dtype = entry["dtype"];
  if (!dtype.is_string()) {
    return fail(absl::StrCat("'dtype' must be a string, found ", JsonTypeName(dtype)));
  }
  const std::string dtype_name = dtype.get<std::string>();
  if (!ParseDType(dtype_name, &view->dtype)) {
    return fail(absl::StrCat("unknown dtype '", dtype_name,
                             "' (supported: F32, F16, BF16, U8, I8, U16, I16, U32, I32, I64)"));
  }

  const json& shape = entry["shape"];
  if (!shape.is_array()) {
    return fail(absl::StrCat("'shape' must be an array, found ", JsonTypeName(shape)));
  }
  view->shape.clear();
  uint64_t numel = 1;
  bool numel_overflow = false;
  for (const json& dim : shape) {
    if (!dim.is_number_integer()) {
      return fail(absl::StrCat("shape ", shape.dump(), " has a non-integer dimension"));
    }
    if (dim.is_number_unsigned() ? dim.get<uint64_t>() > static_cast<uint64_t>(INT64_MAX)
                                 : dim.get<int64_t>() < 0) {
      return fail(absl::StrCat("shape ", shape.dump(), " has a negative or too large dimension"));
    }
    const int64_t d = dim.get<int64_t>();
    view->shape.push_back(d);
    numel_overflow |= __builtin_mul_overflow(numel, static_cast<uint64_t>(d), &numel);
  }
  uint64_t needed = 0;
  if (numel_overflow || numel > static_cast<uint64_t>(INT64_MAX) ||
      __builtin_mul_overflow(numel, DTypeSize(view->dtype), &needed)) {
    return fail(absl::StrCat("shape ", ShapeString(view->shape), " is too large"));
  }

  const json& offsets = entry["data_offsets"];
  if (!offsets.is_array() || offsets.size() != 2 || !offsets[0].is_number_unsigned() ||
      !offsets[1].is_number_unsigned()) {
    return fail(
        absl::StrCat("'data_offsets' must be two non-negative integers, found ", offsets.dump()));
  }
  *begin = offsets[0].get<uint64_t>();
  *end = offsets[1].get<uint64_t>();
  if (*begin > *end) {
    return fail(absl::StrCat("data_offsets [", *begin, ", ", *end, ") end before they begin"));
  }
  if (*end - *begin != needed) {
    return fail(absl::StrCat("data_offsets [", *begin, ", ", *end, ") hold ", *end - *begin,
                             " bytes but shape ", ShapeString(view->shape), " of ", dtype_name,
                             " needs ", needed));
  }
  if (*end > data_size) {
    return fail(absl::StrCat("data_offsets [", *begin, ", ", *end,
                             ") run past the end of the data area (", data_size, " bytes)"));
  }
  view->nbytes = needed;
  return absl::OkStatus();
}

absl::Status ParseMetadata(const std::string& path, const json& j,
                           std::map<std::string, std::string>* out) {
  if (!j.is_object()) {
    return absl::InvalidArgumentError(absl::StrCat(
        path, ": '", kMetadataKey, "' must be an object of strings, found ", JsonTypeName(j)));
  }
  for (const auto& [key, value] : j.items()) {
    if (!value.is_string()) {
      return absl::InvalidArgumentError(absl::StrCat(path, ": '", kMetadataKey, "' entry '", key,
                                                     "' must be a string, found ",
                                                     JsonTypeName(value)));
    }
    (*out)[key] = value.get<std::string>();
  }
  return absl::OkStatus();
}

// Parses JSON, reporting duplicate top-level keys (nlohmann silently keeps the last one, which
// would make a duplicated tensor name ambiguous).
absl::StatusOr<json> ParseHeaderJson(const std::string& path, const char* begin, const char* end) {
  std::string duplicate;
  std::set<std::string> seen;
  json::parser_callback_t callback = [&](int depth, json::parse_event_t event, json& parsed) {
    if (event == json::parse_event_t::key && depth == 1) {
      const std::string& key = parsed.get_ref<const std::string&>();
      if (!seen.insert(key).second && duplicate.empty()) duplicate = key;
    }
    return true;
  };
  json header;
  try {
    header = json::parse(begin, end, callback);
  } catch (const json::exception& e) {
    return absl::InvalidArgumentError(absl::StrCat(path, ": header is not valid JSON: ", e.what()));
  }
  if (!duplicate.empty()) {
    return absl::InvalidArgumentError(
        absl::StrCat(path, ": header names tensor '", duplicate, "' more than once"));
  }
  return header;
}

bool FileExists(const std::string& path) {
  struct stat st;
  return ::stat(path.c_str(), &st) == 0 && S_ISREG(st.st_mode);
}

absl::StatusOr<std::string> ReadTextFile(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  if (!in) {
    return absl::NotFoundError(absl::StrCat(path, ": cannot open: ", std::strerror(errno)));
  }
  std::ostringstream text;
  text << in.rdbuf();
  if (in.bad()) return absl::DataLossError(absl::StrCat(path, ": read failed"));
  return text.str();
}

}  // namespace

absl::StatusOr<std::unique_ptr<SafetensorsFile>> SafetensorsFile::Open(const std::string& path) {
  const int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
  if (fd < 0) {
    const int err = errno;
    std::string message = absl::StrCat(path, ": cannot open: ", std::strerror(err));
    if (err == ENOENT) return absl::NotFoundError(message);
    if (err == EACCES) return absl::PermissionDeniedError(message);
    return absl::UnavailableError(message);
  }
  struct stat st;
  if (::fstat(fd, &st) != 0 || !S_ISREG(st.st_mode)) {
    ::close(fd);
    return absl::InvalidArgumentError(absl::StrCat(path, ": not a regular file"));
  }
  const size_t size = static_cast<size_t>(st.st_size);
  if (size < 8) {
    ::close(fd);
    return absl::DataLossError(absl::StrCat(
        path, ": file is ", size, " bytes, too short for the 8-byte safetensors header length"));
  }
  void* map = ::mmap(nullptr, size, PROT_READ, MAP_PRIVATE, fd, 0);
  const int map_errno = errno;
  ::close(fd);  // the mapping keeps the file referenced
  if (map == MAP_FAILED) {
    return absl::ResourceExhaustedError(
        absl::StrCat(path, ": mmap of ", size, " bytes failed: ", std::strerror(map_errno)));
  }
  // Owned from here on, so every error path below unmaps.
  std::unique_ptr<SafetensorsFile> file(new SafetensorsFile());
  file->path_ = path;
  file->map_ = map;
  file->size_ = size;

  const auto* bytes = static_cast<const unsigned char*>(map);
  uint64_t header_len = 0;
  for (int i = 7; i >= 0; --i) header_len = (header_len << 8) | bytes[i];
  if (header_len > kMaxHeaderBytes) {
    return absl::InvalidArgumentError(
        absl::StrCat(path, ": header length ", header_len, " exceeds the ", kMaxHeaderBytes >> 20,
                     " MB limit (corrupt or not a safetensors file)"));
  }
  if (header_len > size - 8) {
    return absl::DataLossError(absl::StrCat(path, ": header length ", header_len,
                                            " runs past the end of the file (", size,
                                            " bytes; truncated?)"));
  }
  const char* header_begin = reinterpret_cast<const char*>(bytes + 8);
  ASSIGN_OR_RETURN(json header, ParseHeaderJson(path, header_begin, header_begin + header_len));
  if (!header.is_object()) {
    return absl::InvalidArgumentError(
        absl::StrCat(path, ": header must be a JSON object, found ", JsonTypeName(header)));
  }

  const uint64_t data_start = 8 + header_len;
  const uint64_t data_size = size - data_start;
  struct Range {
    uint64_t begin, end;
    const std::string* name;
  };
  std::vector<Range> ranges;
  for (const auto& [name, entry] : header.items()) {
    if (name == kMetadataKey) {
      RETURN_IF_ERROR(ParseMetadata(path, entry, &file->metadata_));
      continue;
    }
    TensorView view;
    view.name = name;
    uint64_t begin = 0, end = 0;
    RETURN_IF_ERROR(ParseTensorEntry(path, name, entry, data_size, &view, &begin, &end));
    // Consumers read through typed pointers (const uint16_t*, const float*), so elements must be
    // naturally aligned in memory. mmap is page aligned, so this is alignment of the file offset.
    // The format itself does not promise it; writers since safetensors 0.3 pad the header to 8.
    const uint64_t file_offset = data_start + begin;
    const size_t element = DTypeSize(view.dtype);
    if (file_offset % element != 0) {
      return absl::InvalidArgumentError(absl::StrCat(
          path, ": tensor '", name, "': data starts at file offset ", file_offset,
          ", not a multiple of the ", element, "-byte ", std::string(DTypeName(view.dtype)),
          " element size; unaligned data is not supported (re-save the file with a current "
          "safetensors writer, which pads the header)"));
    }
    view.data = bytes + file_offset;
    auto [it, inserted] = file->tensors_.emplace(name, std::move(view));
    if (begin != end) ranges.push_back({begin, end, &it->first});
  }

  std::sort(ranges.begin(), ranges.end(),
            [](const Range& a, const Range& b) { return a.begin < b.begin; });
  for (size_t i = 1; i < ranges.size(); ++i) {
    if (ranges[i].begin < ranges[i - 1].end) {
      return absl::InvalidArgumentError(
          absl::StrCat(path, ": tensor '", *ranges[i].name, "': data_offsets [", ranges[i].begin,
                       ", ", ranges[i].end, ") overlap those of tensor '", *ranges[i - 1].name,
                       "' [", ranges[i - 1].begin, ", ", ranges[i - 1].end, ")"));
    }
  }
  return file;
}

SafetensorsFile::~SafetensorsFile() {
  if (map_ != nullptr) ::munmap(map_, size_);
}

const TensorView* SafetensorsFile::Find(const std::string& name) const {
  auto it = tensors_.find(name);
  return it == tensors_.end() ? nullptr : &it->second;
}

std::vector<std::string> SafetensorsFile::Names() const {
  std::vector<std::string> names;
  names.reserve(tensors_.size());
  for (const auto& [name, view] : tensors_) names.push_back(name);
  return names;
}

absl::StatusOr<std::unique_ptr<Checkpoint>> Checkpoint::Open(const std::string& dir) {
  auto checkpoint = std::make_unique<Checkpoint>();
  checkpoint->dir_ = dir;
  const std::string single = absl::StrCat(dir, "/", kSingleFileName);
  const std::string index_path = absl::StrCat(dir, "/", kIndexFileName);

  // Like transformers, a single-file checkpoint wins over an index when both are present.
  if (FileExists(single)) {
    ASSIGN_OR_RETURN(auto file, SafetensorsFile::Open(single));
    for (const std::string& name : file->Names()) checkpoint->index_[name] = file->Find(name);
    checkpoint->files_.push_back(std::move(file));
    return checkpoint;
  }
  if (!FileExists(index_path)) {
    return absl::NotFoundError(absl::StrCat("no ", kSingleFileName, " or ", kIndexFileName,
                                            " in checkpoint directory ", dir));
  }

  ASSIGN_OR_RETURN(std::string index_text, ReadTextFile(index_path));
  json index = json::parse(index_text, nullptr, /*allow_exceptions=*/false);
  if (index.is_discarded()) {
    return absl::InvalidArgumentError(absl::StrCat(index_path, ": not valid JSON"));
  }
  if (!index.is_object() || !index.contains("weight_map") || !index["weight_map"].is_object()) {
    return absl::InvalidArgumentError(
        absl::StrCat(index_path, ": must be an object with a \"weight_map\" object"));
  }
  const json& weight_map = index["weight_map"];
  if (weight_map.empty()) {
    return absl::InvalidArgumentError(absl::StrCat(index_path, ": \"weight_map\" is empty"));
  }

  // Shard file name -> position in files_, opened once each in order of first mention.
  std::map<std::string, size_t> shard_slot;
  for (const auto& [tensor, shard] : weight_map.items()) {
    if (!shard.is_string()) {
      return absl::InvalidArgumentError(absl::StrCat(index_path, ": weight_map entry '", tensor,
                                                     "' must name a shard file (string), found ",
                                                     JsonTypeName(shard)));
    }
    const std::string shard_name = shard.get<std::string>();
    // Shards live next to the index; anything else would let an index reach outside the model.
    if (shard_name.empty() || shard_name.find('/') != std::string::npos || shard_name == "." ||
        shard_name == "..") {
      return absl::InvalidArgumentError(absl::StrCat(index_path, ": weight_map entry '", tensor,
                                                     "' names shard '", shard_name,
                                                     "', which is not a plain file name"));
    }
    if (shard_slot.count(shard_name)) continue;
    const std::string shard_path = absl::StrCat(dir, "/", shard_name);
    auto file = SafetensorsFile::Open(shard_path);
    if (!file.ok()) {
      if (absl::IsNotFound(file.status())) {
        return absl::NotFoundError(absl::StrCat("shard ", shard_name, " named by ", index_path,
                                                " (for tensor '", tensor, "') is missing"));
      }
      return file.status();
    }
    shard_slot[shard_name] = checkpoint->files_.size();
    checkpoint->files_.push_back(*std::move(file));
  }

  // Every tensor of every shard is indexed; a name in two shards is ambiguous.
  std::map<std::string, const SafetensorsFile*> owner;
  for (const auto& file : checkpoint->files_) {
    for (const std::string& name : file->Names()) {
      auto [it, inserted] = owner.emplace(name, file.get());
      if (!inserted) {
        return absl::InvalidArgumentError(absl::StrCat("tensor '", name, "' is present in both ",
                                                       it->second->path(), " and ", file->path()));
      }
      checkpoint->index_[name] = file->Find(name);
    }
  }
  for (const auto& [tensor, shard] : weight_map.items()) {
    const SafetensorsFile& file = *checkpoint->files_[shard_slot.at(shard.get<std::string>())];
    if (file.Find(tensor) == nullptr) {
      return absl::InvalidArgumentError(absl::StrCat("tensor '", tensor, "' is listed in ",
                                                     index_path, " for shard ", file.path(),
                                                     " but that shard does not contain it"));
    }
  }
  return checkpoint;
}

const TensorView* Checkpoint::Find(const std::string& name) const {
  auto it = index_.find(name);
  return it == index_.end() ? nullptr : it->second;
}

absl::StatusOr<const TensorView*> Checkpoint::Require(const std::string& name) const {
  const TensorView* view = Find(name);
  if (view == nullptr) {
    return absl::NotFoundError(absl::StrCat("tensor '", name, "' not found in checkpoint ", dir_));
  }
  return view;
}

std::vector<std::string> Checkpoint::Names() const {
  std::vector<std::string> names;
  names.reserve(index_.size());
  for (const auto& [name, view] : index_) names.push_back(name);
  return names;
}

}  // namespace spqr
