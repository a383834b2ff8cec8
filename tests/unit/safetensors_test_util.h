// Test helpers: temporary directories and safetensors files built byte by byte, so tests can
// produce both valid files and every kind of malformed one.
#pragma once

#include <stdlib.h>

#include <algorithm>
#include <cstdint>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <map>
#include <string>
#include <vector>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "gtest/gtest.h"

namespace spqr::testing {

// A fresh directory under the gtest temp dir, removed with its contents on destruction.
class TempDir {
 public:
  TempDir() {
    std::string pattern = ::testing::TempDir() + "/spqr_test_XXXXXX";
    char* made = ::mkdtemp(pattern.data());
    EXPECT_NE(made, nullptr) << "mkdtemp failed for " << pattern;
    path_ = pattern;
  }
  ~TempDir() {
    std::error_code ignored;
    std::filesystem::remove_all(path_, ignored);
  }
  TempDir(const TempDir&) = delete;
  TempDir& operator=(const TempDir&) = delete;

  const std::string& path() const { return path_; }

  // Writes `contents` to path()/`name` and returns the full path.
  std::string Write(const std::string& name, const std::string& contents) const {
    const std::string full = path_ + "/" + name;
    std::ofstream out(full, std::ios::binary | std::ios::trunc);
    out.write(contents.data(), static_cast<std::streamsize>(contents.size()));
    EXPECT_TRUE(out.good()) << "cannot write " << full;
    return full;
  }

 private:
  std::string path_;
};

// 8-byte little-endian length + header + data. `header_len` overrides the stored length (for
// truncation tests); by default it is the header's size.
inline std::string RawSafetensors(const std::string& header, const std::string& data,
                                  int64_t header_len = -1) {
  const uint64_t len = header_len < 0 ? header.size() : static_cast<uint64_t>(header_len);
  std::string bytes(8, '\0');
  for (int i = 0; i < 8; ++i) bytes[i] = static_cast<char>((len >> (8 * i)) & 0xff);
  return bytes + header + data;
}

// Pads `header` with trailing spaces so the data area starts at a multiple of 8, as the
// reference writer does.
inline std::string PadHeader(std::string header) {
  while ((8 + header.size()) % 8 != 0) header.push_back(' ');
  return header;
}

struct TestTensor {
  std::string name;
  std::string dtype;  // "F32", "BF16", ...
  std::vector<int64_t> shape;
  std::string bytes;  // raw little-endian element bytes
};

inline size_t TestDTypeSize(const std::string& dtype) {
  if (dtype == "F32" || dtype == "I32" || dtype == "U32") return 4;
  if (dtype == "F16" || dtype == "BF16" || dtype == "I16" || dtype == "U16") return 2;
  if (dtype == "I64") return 8;
  return 1;
}

template <typename T>
std::string BytesOf(const std::vector<T>& values) {
  std::string bytes(values.size() * sizeof(T), '\0');
  if (!values.empty()) std::memcpy(bytes.data(), values.data(), bytes.size());
  return bytes;
}

// A zero-filled tensor of `dtype` and `shape`.
inline TestTensor ZeroTensor(const std::string& name, const std::string& dtype,
                             std::vector<int64_t> shape) {
  int64_t numel = 1;
  for (int64_t d : shape) numel *= d;
  return TestTensor{name, dtype, shape, std::string(numel * TestDTypeSize(dtype), '\0')};
}

// A valid safetensors file laid out like the reference writer: tensors ordered by element size
// (largest first) then name, contiguous, header padded to 8 bytes.
inline std::string BuildSafetensors(std::vector<TestTensor> tensors,
                                    const std::map<std::string, std::string>& metadata = {}) {
  std::stable_sort(tensors.begin(), tensors.end(), [](const TestTensor& a, const TestTensor& b) {
    const size_t sa = TestDTypeSize(a.dtype), sb = TestDTypeSize(b.dtype);
    return sa != sb ? sa > sb : a.name < b.name;
  });
  // absl::StrCat rather than string operator+, which trips a GCC 12 -Wrestrict false positive.
  std::string header = "{";
  bool first = true;
  if (!metadata.empty()) {
    header += "\"__metadata__\":{";
    bool first_meta = true;
    for (const auto& [key, value] : metadata) {
      absl::StrAppend(&header, first_meta ? "\"" : ",\"", key, "\":\"", value, "\"");
      first_meta = false;
    }
    header += "}";
    first = false;
  }
  std::string data;
  for (const TestTensor& t : tensors) {
    const size_t begin = data.size();
    data += t.bytes;
    absl::StrAppend(&header, first ? "\"" : ",\"", t.name, "\":{\"dtype\":\"", t.dtype,
                    "\",\"shape\":[", absl::StrJoin(t.shape, ","), "],\"data_offsets\":[", begin,
                    ",", data.size(), "]}");
    first = false;
  }
  header += "}";
  return RawSafetensors(PadHeader(header), data);
}

}  // namespace spqr::testing
