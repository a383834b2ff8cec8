#include "engine/model/tensor.h"

#include <cstdlib>

namespace spqr {

size_t DTypeSize(DType dtype) {
  switch (dtype) {
    case DType::kF32:
    case DType::kU32:
    case DType::kI32:
      return 4;
    case DType::kF16:
    case DType::kBF16:
    case DType::kU16:
    case DType::kI16:
      return 2;
    case DType::kU8:
    case DType::kI8:
      return 1;
    case DType::kI64:
      return 8;
  }
  // Unreachable for valid enum values; an out-of-range value is a programmer bug.
  std::abort();
}

std::string_view DTypeName(DType dtype) {
  switch (dtype) {
    case DType::kF32:
      return "F32";
    case DType::kF16:
      return "F16";
    case DType::kBF16:
      return "BF16";
    case DType::kU8:
      return "U8";
    case DType::kI8:
      return "I8";
    case DType::kU16:
      return "U16";
    case DType::kI16:
      return "I16";
    case DType::kU32:
      return "U32";
    case DType::kI32:
      return "I32";
    case DType::kI64:
      return "I64";
  }
  std::abort();
}

bool ParseDType(std::string_view name, DType* out) {
  static constexpr DType kAll[] = {DType::kF32, DType::kF16, DType::kBF16, DType::kU8,
                                   DType::kI8,  DType::kU16, DType::kI16,  DType::kU32,
                                   DType::kI32, DType::kI64};
  for (DType d : kAll) {
    if (DTypeName(d) == name) {
      *out = d;
      return true;
    }
  }
  return false;
}

}  // namespace spqr
