// GPU benchmark of one SpQR linear layer against fp16 cuBLAS (docs/gpu-performance.md, section 5):
// for each shape, SpQR configuration and batch, the median time of LaunchSpqrGpuLinear on every
// path that takes the batch (decode up to 16, the fused tensor-core kernel, dequantize + cuBLAS;
// "chosen" marks the one its rule picks) and of DenseGemm on random fp16 weights of the same shape,
// the GB/s each achieves on the bytes it must read, and the device-to-device copy bandwidth
// measured in the same run (the ceiling). Writes raw JSON (device, driver, commit, date, every
// measurement); no table.
//
//   spqr-bench-gpu --out bench/results/gpu/<date>.json [--commit SHA] [--iters 20] [--smoke]
//   (also accepts --benchmark_out=FILE and ignores other --benchmark_* flags, as passed by the
//   device bundle's run.sh, tools/gpu-bundle.sh); bench/gpu/make_gpu_table.py renders the JSON.
//
// --smoke: tiny shapes and 2 iterations, for the CPU harness build (spqr_gpu_bench_emu, ctest
// spqr_gpu_bench_smoke): checks that the whole program runs; its times mean nothing.
#include <cuda_runtime.h>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstring>
#include <ctime>
#include <fstream>
#include <random>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/strings/str_cat.h"
#include "engine/backend/cuda/cublas_gemm.h"
#include "engine/backend/cuda/cuda_status.h"
#include "engine/backend/cuda/device_buffer.h"
#include "engine/backend/cuda/device_query.h"
#include "engine/backend/cuda/spqr_gpu_layout.h"
#include "engine/backend/cuda/spqr_gpu_linear.cuh"
#include "engine/format/spqr_layer.h"
#include "engine/util/half.h"
#include "engine/util/status_macros.h"
#include "nlohmann/json.hpp"
#include "tests/gpu/spqr_random_layer.h"

namespace spqr {
namespace {

struct Options {
  std::string out;
  std::string commit;
  int iters = 20;
  bool smoke = false;
};

struct Config {
  const char* name;
  int wbits, beta1, beta2, stats_bits;
  double outlier_share;
};

// Median milliseconds of `iters` runs of fn (after 3 warm-up runs), timed with events on `stream`.
template <typename Fn>
absl::StatusOr<double> TimeMs(cudaStream_t stream, int iters, Fn fn) {
  cudaEvent_t start, stop;
  CUDA_RETURN_IF_ERROR(cudaEventCreate(&start));
  CUDA_RETURN_IF_ERROR(cudaEventCreate(&stop));
  std::vector<double> ms;
  absl::Status status;
  for (int i = 0; i < iters + 3 && status.ok(); ++i) {
    cudaEventRecord(start, stream);
    status = fn();
    cudaEventRecord(stop, stream);
    if (cudaEventSynchronize(stop) != cudaSuccess) status = absl::InternalError("event sync");
    float t = 0;
    cudaEventElapsedTime(&t, start, stop);
    if (i >= 3) ms.push_back(t);
  }
  cudaEventDestroy(start);
  cudaEventDestroy(stop);
  RETURN_IF_ERROR(status);
  std::sort(ms.begin(), ms.end());
  return ms[ms.size() / 2];
}

// Device-to-device copy of `bytes`; GB/s counts the bytes read plus the bytes written.
absl::StatusOr<nlohmann::json> CopyBandwidth(cudaStream_t stream, size_t bytes, int iters) {
  ASSIGN_OR_RETURN(DeviceBuffer a, DeviceBuffer::Allocate(bytes));
  ASSIGN_OR_RETURN(DeviceBuffer b, DeviceBuffer::Allocate(bytes));
  RETURN_IF_ERROR(a.Fill(1));
  ASSIGN_OR_RETURN(double ms, TimeMs(stream, iters, [&]() -> absl::Status {
                     CUDA_RETURN_IF_ERROR(cudaMemcpyAsync(b.data(), a.data(), bytes,
                                                          cudaMemcpyDeviceToDevice, stream));
                     return absl::OkStatus();
                   }));
  return nlohmann::json{
      {"bytes", bytes}, {"ms", ms}, {"read_plus_write_gbps", 2.0 * bytes / ms / 1e6}};
}

const char* PathName(SpqrGpuPath path) {
  switch (path) {
    case SpqrGpuPath::kDecode:
      return "decode";
    case SpqrGpuPath::kMma:
      return "mma";
    default:
      return "dequant_gemm";
  }
}

std::vector<uint16_t> RandomF16(size_t count, float scale, std::mt19937& rng) {
  std::normal_distribution<float> d(0.0f, scale);
  std::vector<uint16_t> v(count);
  for (uint16_t& h : v) h = F32ToF16(d(rng));
  return v;
}

absl::Status Run(const Options& opt) {
  ASSIGN_OR_RETURN(std::vector<CudaDeviceInfo> devices, QueryCudaDevices());
  if (devices.empty()) return absl::FailedPreconditionError("no CUDA device");
  const CudaDeviceInfo& dev = devices.front();
  cudaStream_t stream;
  CUDA_RETURN_IF_ERROR(cudaStreamCreate(&stream));
  ASSIGN_OR_RETURN(CublasHandle cublas, CublasHandle::Create(stream));

  const std::vector<std::pair<int64_t, int64_t>> shapes =
      opt.smoke ? std::vector<std::pair<int64_t, int64_t>>{{40, 256}, {24, 384}}
                : std::vector<std::pair<int64_t, int64_t>>{
                      {4096, 4096}, {11008, 4096}, {4096, 11008}, {8192, 8192}, {28672, 8192}};
  const std::vector<Config> configs = {{"w3 16/16", 3, 16, 16, 3, 0.005},
                                       {"w3 8/64", 3, 8, 64, 3, 0.01},
                                       {"w4 16/16", 4, 16, 16, 3, 0.003}};
  const std::vector<int64_t> batches =
      opt.smoke ? std::vector<int64_t>{1, 16, 17, 70}
                : std::vector<int64_t>{1, 2, 4, 8, 16, 32, 128, 256, 1024};
  const int iters = opt.smoke ? 2 : opt.iters;

  nlohmann::json out;
  char date[32];
  const std::time_t now = std::time(nullptr);
  std::strftime(date, sizeof date, "%Y-%m-%dT%H:%M:%SZ", std::gmtime(&now));
  out["date"] = date;
  out["commit"] = opt.commit;
  out["device"] = {{"name", dev.name},
                   {"arch", dev.ArchName()},
                   {"sms", dev.multiprocessor_count},
                   {"memory_bytes", dev.total_memory_bytes},
                   {"l2_bytes", dev.l2_cache_bytes},
                   {"driver_version", dev.driver_version},
                   {"runtime_version", dev.runtime_version}};
  out["iters"] = iters;
  out["smoke"] = opt.smoke;
  ASSIGN_OR_RETURN(out["copy"], CopyBandwidth(stream, opt.smoke ? (1u << 20) : (1u << 30), iters));

  std::mt19937 rng(1);
  nlohmann::json results = nlohmann::json::array();
  const int64_t max_batch = *std::max_element(batches.begin(), batches.end());
  for (const auto& [m, n] : shapes) {
    // fp16 baseline weights and the shared inputs/outputs of this shape.
    ASSIGN_OR_RETURN(DeviceBuffer w16, DeviceBuffer::FromVector(RandomF16(m * n, 0.02f, rng)));
    ASSIGN_OR_RETURN(DeviceBuffer x16,
                     DeviceBuffer::FromVector(RandomF16(max_batch * n, 1.0f, rng)));
    std::vector<float> xh(max_batch * n);
    std::normal_distribution<float> normal(0.0f, 1.0f);
    for (float& v : xh) v = normal(rng);
    ASSIGN_OR_RETURN(DeviceBuffer x, DeviceBuffer::FromVector(xh));
    ASSIGN_OR_RETURN(DeviceBuffer y, DeviceBuffer::Allocate(max_batch * m * sizeof(float)));
    for (int64_t batch : batches) {
      DenseGemmParams g;
      g.x = x16.data();
      g.w = w16.data();
      g.y = y.as<float>();
      g.dtype = DType::kF16;
      g.m = batch;
      g.n = m;
      g.k = n;
      ASSIGN_OR_RETURN(double ms, TimeMs(stream, iters, [&] { return DenseGemm(cublas, g); }));
      const double bytes = 2.0 * m * n + 2.0 * batch * n + 4.0 * batch * m;
      results.push_back({{"kernel", "fp16_cublas"},
                         {"m", m},
                         {"n", n},
                         {"batch", batch},
                         {"ms", ms},
                         {"must_read_bytes", bytes},
                         {"gbps", bytes / ms / 1e6}});
    }
    for (const Config& c : configs) {
      testing::RandomLayerSpec spec{m, n, c.wbits, c.beta1, c.beta2, c.stats_bits, c.outlier_share};
      const PackedSpqrLayer layer = testing::RandomSpqrLayer(spec, rng);
      ASSIGN_OR_RETURN(SpqrGpuDeviceLayer device, SpqrGpuDeviceLayer::FromPacked(layer, c.name));
      for (int64_t batch : batches) {
        // Every path that takes this batch, so the run can check the rule (ChooseSpqrGpuPath).
        const SpqrGpuPath chosen = ChooseSpqrGpuPath(device.view(), batch);
        for (SpqrGpuPath path :
             {SpqrGpuPath::kDecode, SpqrGpuPath::kMma, SpqrGpuPath::kDequantGemm}) {
          if (path == SpqrGpuPath::kDecode && batch > kSpqrGpuDecodeKernelMaxBatch) continue;
          const int64_t ws_bytes = SpqrGpuLinearWorkspaceBytes(device.view(), batch, path);
          ASSIGN_OR_RETURN(DeviceBuffer ws, DeviceBuffer::Allocate(ws_bytes));
          SpqrGpuLinearParams p;
          p.layer = device.view();
          p.x = x.as<float>();
          p.y = y.as<float>();
          p.batch = batch;
          p.workspace = ws.data();
          p.workspace_bytes = ws_bytes;
          p.cublas = &cublas;
          p.path = path;
          ASSIGN_OR_RETURN(double ms,
                           TimeMs(stream, iters, [&] { return LaunchSpqrGpuLinear(p, stream); }));
          const double bytes =
              static_cast<double>(SpqrLayerPayloadBytes(layer)) + 4.0 * batch * n + 4.0 * batch * m;
          results.push_back(
              {{"kernel", "spqr"},
               {"config", c.name},
               {"path", PathName(path)},
               {"chosen", path == chosen},
               {"mma_splits",
                path == SpqrGpuPath::kMma ? SpqrGpuMmaSplits(device.view(), batch) : 0},
               {"m", m},
               {"n", n},
               {"batch", batch},
               {"outliers", layer.num_outliers()},
               {"ms", ms},
               {"must_read_bytes", bytes},
               {"device_bytes", device.device_bytes()},
               {"gbps", bytes / ms / 1e6}});
        }
      }
      std::fprintf(stderr, "%lldx%lld %s done\n", static_cast<long long>(m),
                   static_cast<long long>(n), c.name);
    }
  }
  out["results"] = results;
  CUDA_RETURN_IF_ERROR(cudaStreamSynchronize(stream));
  cudaStreamDestroy(stream);
  const std::string text = out.dump(1) + "\n";
  if (opt.out.empty()) {
    std::fputs(text.c_str(), stdout);
  } else {
    std::ofstream f(opt.out);
    f << text;
    if (!f) return absl::InternalError(absl::StrCat("cannot write ", opt.out));
  }
  return absl::OkStatus();
}

}  // namespace
}  // namespace spqr

int main(int argc, char** argv) {
  spqr::Options opt;
  for (int i = 1; i < argc; ++i) {
    const std::string a = argv[i];
    auto value = [&]() -> std::string {
      if (i + 1 >= argc) {
        std::fprintf(stderr, "%s needs a value\n", a.c_str());
        std::exit(2);
      }
      return argv[++i];
    };
    if (a == "--out") {
      opt.out = value();
    } else if (a == "--commit") {
      opt.commit = value();
    } else if (a == "--iters") {
      opt.iters = std::max(1, std::atoi(value().c_str()));
    } else if (a == "--smoke") {
      opt.smoke = true;
    } else if (a.rfind("--benchmark_out=", 0) == 0) {
      // tools/gpu-bundle.sh's run.sh passes Google Benchmark's flags to every benchmark binary:
      // take the output path, ignore the format flags.
      opt.out = a.substr(std::strlen("--benchmark_out="));
    } else if (a.rfind("--benchmark_", 0) == 0) {
      // ignored
    } else {
      std::fprintf(stderr, "usage: %s [--out FILE] [--commit SHA] [--iters N] [--smoke]\n",
                   argv[0]);
      return 2;
    }
  }
  const absl::Status status = spqr::Run(opt);
  if (!status.ok()) {
    std::fprintf(stderr, "spqr-bench-gpu: %s\n", status.ToString().c_str());
    return 1;
  }
  return 0;
}
