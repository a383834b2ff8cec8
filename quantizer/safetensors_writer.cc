#include "quantizer/safetensors_writer.h"

#include <cstdio>
#include <memory>
#include <set>

#include "absl/strings/str_cat.h"
#include "nlohmann/json.hpp"

namespace spqr {

TensorView ViewOf(const OwnedTensor& t) {
  return TensorView{t.name, t.dtype, t.shape, t.bytes.data(), t.bytes.size()};
}

absl::Status WriteSafetensors(const std::string& path, const std::vector<TensorView>& tensors,
                              const std::map<std::string, std::string>& metadata) {
  nlohmann::ordered_json header = nlohmann::ordered_json::object();
  if (!metadata.empty()) header["__metadata__"] = metadata;
  std::set<std::string> names;
  size_t offset = 0;
  for (const TensorView& t : tensors) {
    if (!names.insert(t.name).second) {
      return absl::InvalidArgumentError(absl::StrCat("duplicate tensor name '", t.name, "'"));
    }
    if (static_cast<size_t>(t.numel()) * DTypeSize(t.dtype) != t.nbytes) {
      return absl::InvalidArgumentError(
          absl::StrCat("tensor '", t.name, "': byte size does not match its shape"));
    }
    header[t.name] = {{"dtype", std::string(DTypeName(t.dtype))},
                      {"shape", t.shape},
                      {"data_offsets", {offset, offset + t.nbytes}}};
    offset += t.nbytes;
  }
  std::string text = header.dump();
  while (text.size() % 8 != 0) text.push_back(' ');
  std::unique_ptr<FILE, int (*)(FILE*)> f(std::fopen(path.c_str(), "wb"), &std::fclose);
  if (!f) return absl::PermissionDeniedError(absl::StrCat("cannot create '", path, "'"));
  const uint64_t len = text.size();
  uint8_t len_bytes[8];
  for (int i = 0; i < 8; ++i) len_bytes[i] = static_cast<uint8_t>(len >> (8 * i));
  bool ok = std::fwrite(len_bytes, 1, 8, f.get()) == 8 &&
            std::fwrite(text.data(), 1, text.size(), f.get()) == text.size();
  for (const TensorView& t : tensors) {
    if (!ok) break;
    if (t.nbytes > 0) ok = std::fwrite(t.data, 1, t.nbytes, f.get()) == t.nbytes;
  }
  ok = ok && std::fflush(f.get()) == 0;
  if (!ok) return absl::DataLossError(absl::StrCat("short write to '", path, "' (disk full?)"));
  return absl::OkStatus();
}

}  // namespace spqr
