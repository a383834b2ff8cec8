// Memory read bandwidth: a read-only vector sum over a buffer (default 1 GiB) with T OpenMP
// threads, best of R passes. Prints one JSON object. The peer benchmark (run_cpu_peer.py) compiles
// it with `g++ -O3 -march=native -fopenmp` and compares each kernel's achieved GB/s against it.
//
//   membw [--gib 1] [--threads 1,2] [--repeats 5]
//
// Why a hand-written sum: decode reads every weight once per token, so the ceiling is streaming
// read bandwidth (no writes). Four independent accumulators keep the adds off the critical path;
// the buffer is touched (written) once before timing so its pages are resident.
#include <immintrin.h>
#include <omp.h>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <string>
#include <vector>

namespace {

#if defined(__AVX512F__)
constexpr const char* kIsa = "avx512";
using Vec = __m512;
inline Vec Zero() { return _mm512_setzero_ps(); }
inline Vec Load(const float* p) { return _mm512_load_ps(p); }
inline Vec Add(Vec a, Vec b) { return _mm512_add_ps(a, b); }
// Not _mm512_reduce_add_ps: GCC 12's header trips -Wuninitialized on it.
inline float Reduce(Vec v) {
  alignas(64) float t[16];
  _mm512_store_ps(t, v);
  float s = 0;
  for (float x : t) s += x;
  return s;
}
constexpr int kLanes = 16;
#elif defined(__AVX__)
constexpr const char* kIsa = "avx";
using Vec = __m256;
inline Vec Zero() { return _mm256_setzero_ps(); }
inline Vec Load(const float* p) { return _mm256_load_ps(p); }
inline Vec Add(Vec a, Vec b) { return _mm256_add_ps(a, b); }
inline float Reduce(Vec v) {
  alignas(32) float t[8];
  _mm256_store_ps(t, v);
  return t[0] + t[1] + t[2] + t[3] + t[4] + t[5] + t[6] + t[7];
}
constexpr int kLanes = 8;
#else
#error "membw needs AVX (compile with -march=native on x86-64)"
#endif

// Sum of a[0..n), n a multiple of 4 * kLanes, a 64-byte aligned.
float SumRange(const float* a, size_t n) {
  Vec s0 = Zero(), s1 = Zero(), s2 = Zero(), s3 = Zero();
  for (size_t i = 0; i < n; i += 4 * kLanes) {
    s0 = Add(s0, Load(a + i));
    s1 = Add(s1, Load(a + i + kLanes));
    s2 = Add(s2, Load(a + i + 2 * kLanes));
    s3 = Add(s3, Load(a + i + 3 * kLanes));
  }
  return Reduce(Add(Add(s0, s1), Add(s2, s3)));
}

}  // namespace

int main(int argc, char** argv) {
  double gib = 1.0;
  std::vector<int> threads = {1, 2};
  int repeats = 5;
  for (int i = 1; i + 1 < argc; i += 2) {
    const std::string flag = argv[i];
    if (flag == "--gib") {
      gib = std::atof(argv[i + 1]);
    } else if (flag == "--repeats") {
      repeats = std::atoi(argv[i + 1]);
    } else if (flag == "--threads") {
      threads.clear();
      for (char* tok = std::strtok(argv[i + 1], ","); tok; tok = std::strtok(nullptr, ",")) {
        threads.push_back(std::atoi(tok));
      }
    } else {
      std::fprintf(stderr, "usage: membw [--gib 1] [--threads 1,2] [--repeats 5]\n");
      return 2;
    }
  }
  const size_t chunk = 4 * kLanes * 1024;  // every thread's share is a multiple of this
  size_t n = static_cast<size_t>(gib * (1ull << 30) / sizeof(float));
  n = n / (chunk * 64) * (chunk * 64);
  float* a = static_cast<float*>(std::aligned_alloc(64, n * sizeof(float)));
  if (a == nullptr) return 1;
#pragma omp parallel for schedule(static)
  for (size_t i = 0; i < n; ++i) a[i] = 1.0f / static_cast<float>(1 + (i & 1023));

  std::printf("{\"isa\": \"%s\", \"bytes\": %zu, \"repeats\": %d, \"results\": [", kIsa,
              n * sizeof(float), repeats);
  for (size_t k = 0; k < threads.size(); ++k) {
    const int t = threads[k];
    double best = 1e30, checksum = 0;
    std::vector<double> secs;
    for (int r = 0; r < repeats; ++r) {
      const auto t0 = std::chrono::steady_clock::now();
      double total = 0;
#pragma omp parallel num_threads(t) reduction(+ : total)
      {
        const int nt = omp_get_num_threads(), id = omp_get_thread_num();
        const size_t chunks = n / chunk;
        const size_t begin = chunks * id / nt * chunk, end = chunks * (id + 1) / nt * chunk;
        total += SumRange(a + begin, end - begin);
      }
      const double s = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
      secs.push_back(s);
      best = std::min(best, s);
      checksum = total;
    }
    std::printf("%s{\"threads\": %d, \"best_gb_per_second\": %.3f, \"run_seconds\": [",
                k ? ", " : "", t, n * sizeof(float) / best / 1e9);
    for (size_t r = 0; r < secs.size(); ++r) std::printf("%s%.6f", r ? ", " : "", secs[r]);
    std::printf("], \"checksum\": %.6g}", checksum);
  }
  std::printf("]}\n");
  std::free(a);
  return 0;
}
