// Tensor views over memory owned elsewhere (usually a memory-mapped safetensors file).
#pragma once

#include <cstddef>
#include <cstdint>
#include <string>
#include <string_view>
#include <vector>

namespace spqr {

// Element types that appear in checkpoints. F32/F16/BF16 for dense weights; the integer types hold
// packed SpQR codes, indices and offsets.
enum class DType { kF32, kF16, kBF16, kU8, kI8, kU16, kI16, kU32, kI32, kI64 };

// Size of one element in bytes.
size_t DTypeSize(DType dtype);
// Safetensors spelling: "F32", "F16", "BF16", "U8", ...
std::string_view DTypeName(DType dtype);
// Parses a safetensors dtype string; returns false for unknown ones.
bool ParseDType(std::string_view name, DType* out);

// A read-only, non-owning view of a row-major tensor.
struct TensorView {
  std::string name;
  DType dtype = DType::kF32;
  std::vector<int64_t> shape;
  const void* data = nullptr;
  size_t nbytes = 0;

  int64_t numel() const {
    int64_t n = 1;
    for (int64_t d : shape) n *= d;
    return n;
  }
  int rank() const { return static_cast<int>(shape.size()); }
  template <typename T>
  const T* as() const {
    return static_cast<const T*>(data);
  }
};

}  // namespace spqr
