// libFuzzer target for the safetensors header parser (SafetensorsFile::Open). Every input must
// come back as an error status or as tensor views that lie inside the mapped file; the target
// reads every byte of every view so ASan reports any view that does not.
//
// Build (clang only): configure with -DSPQR_FUZZ=ON -DCMAKE_CXX_COMPILER=clang++, then build the
// target safetensors_fuzz. Run it with -dict=tests/fuzz/safetensors.dict, a scratch corpus
// directory first (new inputs are written there) and tests/fuzz/corpus/safetensors as seeds.
#include <sys/mman.h>
#include <unistd.h>

#include <cstdint>
#include <cstdlib>
#include <string>

#include "engine/model/safetensors.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  // An in-memory file: Open() takes a path, and a disk file would make each run an I/O.
  static const int fd = memfd_create("safetensors_fuzz", 0);
  static const std::string path = "/proc/self/fd/" + std::to_string(fd);
  if (fd < 0 || ftruncate(fd, 0) != 0) std::abort();
  if (size > 0 && pwrite(fd, data, size, 0) != static_cast<ssize_t>(size)) std::abort();

  auto file = spqr::SafetensorsFile::Open(path);
  if (!file.ok()) return 0;
  const auto* begin = static_cast<const uint8_t*>((*file)->mapped_data());
  const auto* end = begin + (*file)->mapped_size();
  volatile uint8_t sink = 0;
  for (const std::string& name : (*file)->Names()) {
    const spqr::TensorView* view = (*file)->Find(name);
    const auto* bytes = static_cast<const uint8_t*>(view->data);
    if (bytes < begin || bytes + view->nbytes > end) std::abort();
    if (view->nbytes != static_cast<size_t>(view->numel()) * spqr::DTypeSize(view->dtype)) {
      std::abort();
    }
    for (size_t i = 0; i < view->nbytes; ++i) sink = sink ^ bytes[i];
  }
  return 0;
}
