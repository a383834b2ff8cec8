#include "engine/backend/cuda/cublas_api.h"

#include <string>

#include "absl/strings/str_cat.h"

#if !defined(SPQR_CUDA_EMU)
#include <cuda_runtime.h>
#include <dlfcn.h>

#endif

namespace spqr {
namespace {

#if defined(SPQR_CUDA_EMU)

absl::StatusOr<CublasApi> Resolve() {
  CublasApi api;
  api.create = &cublasCreate_v2;
  api.destroy = &cublasDestroy_v2;
  api.set_stream = &cublasSetStream_v2;
  api.gemm_ex = static_cast<CublasGemmExFn>(&cublasGemmEx);
  return api;
}

#else

#define SPQR_STR2(x) #x
#define SPQR_STR(x) SPQR_STR2(x)
const char kLibrary[] = "libcublas.so." SPQR_STR(CUBLAS_VER_MAJOR);

// The directory of the libcudart this binary is linked against ("" when unknown): a toolkit not on
// the loader's path (e.g. /usr/local/cuda/lib64 reached only through the binary's RUNPATH, which
// dlopen from a static library does honour, or a copied-together tree) keeps cuBLAS next to it.
std::string CudartDirectory() {
  Dl_info info;
  if (dladdr(reinterpret_cast<void*>(&cudaGetDeviceCount), &info) == 0 ||
      info.dli_fname == nullptr) {
    return "";
  }
  const std::string path = info.dli_fname;
  const size_t slash = path.rfind('/');
  return slash == std::string::npos ? "" : path.substr(0, slash + 1);
}

template <typename Fn>
absl::Status Bind(void* library, const char* name, Fn& fn) {
  dlerror();
  void* symbol = dlsym(library, name);
  if (symbol == nullptr) {
    const char* error = dlerror();
    return absl::FailedPreconditionError(
        absl::StrCat(kLibrary, " has no ", name, ": ", error != nullptr ? error : "null symbol"));
  }
  fn = reinterpret_cast<Fn>(symbol);
  return absl::OkStatus();
}

absl::StatusOr<CublasApi> Resolve() {
  void* library = dlopen(kLibrary, RTLD_NOW | RTLD_LOCAL);
  std::string errors = absl::StrCat(kLibrary, ": ", dlerror());
  if (library == nullptr) {
    const std::string dir = CudartDirectory();
    if (!dir.empty()) {
      const std::string path = dir + kLibrary;
      library = dlopen(path.c_str(), RTLD_NOW | RTLD_LOCAL);
      if (library == nullptr) absl::StrAppend(&errors, "; ", path, ": ", dlerror());
    }
  }
  if (library == nullptr) {
    return absl::FailedPreconditionError(absl::StrCat(
        "cannot load cuBLAS (the CUDA backend's dense GEMMs need it): ", errors,
        ". Install the CUDA toolkit's cuBLAS or add its directory to LD_LIBRARY_PATH"));
  }
  // Never dlclose: the handles and the library's TLS live as long as the process.
  CublasApi api;
  absl::Status status = Bind(library, "cublasCreate_v2", api.create);
  if (status.ok()) status = Bind(library, "cublasDestroy_v2", api.destroy);
  if (status.ok()) status = Bind(library, "cublasSetStream_v2", api.set_stream);
  if (status.ok()) status = Bind(library, "cublasGemmEx", api.gemm_ex);
  if (!status.ok()) return status;
  return api;
}

#endif

}  // namespace

absl::StatusOr<const CublasApi*> LoadCublasApi() {
  static const absl::StatusOr<CublasApi>* const loaded = new absl::StatusOr<CublasApi>(Resolve());
  if (!loaded->ok()) return loaded->status();
  return &loaded->value();
}

}  // namespace spqr
