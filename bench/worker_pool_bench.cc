// Cost of handing out one parallel job: the CPU kernels' worker pool (engine/backend/cpu/
// worker_pool.h) against an OpenMP parallel region, both with --threads threads and an empty body,
// interleaved over --rounds rounds of --jobs jobs each. Prints one JSON line per round
// (microseconds per job). OMP_WAIT_POLICY changes the OpenMP side only.
//
//   spqr-bench-worker-pool [--threads 2] [--jobs 100000] [--rounds 3]
#include <omp.h>

#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <string>

#include "engine/backend/cpu/worker_pool.h"

namespace {

double MicrosPerJob(std::chrono::steady_clock::time_point a,
                    std::chrono::steady_clock::time_point b, int jobs) {
  return std::chrono::duration<double, std::micro>(b - a).count() / jobs;
}

}  // namespace

int main(int argc, char** argv) {
  int threads = 2, jobs = 100000, rounds = 3;
  for (int i = 1; i + 1 < argc; i += 2) {
    const std::string flag = argv[i];
    const int value = std::atoi(argv[i + 1]);
    if (value <= 0) {
      std::fprintf(stderr, "error: %s needs a positive integer, got '%s'\n", argv[i], argv[i + 1]);
      return 2;
    }
    if (flag == "--threads") {
      threads = value;
    } else if (flag == "--jobs") {
      jobs = value;
    } else if (flag == "--rounds") {
      rounds = value;
    } else {
      std::fprintf(stderr, "usage: spqr-bench-worker-pool [--threads N] [--jobs N] [--rounds N]\n");
      return 2;
    }
  }
  if (argc % 2 == 0) {
    std::fprintf(stderr, "usage: spqr-bench-worker-pool [--threads N] [--jobs N] [--rounds N]\n");
    return 2;
  }
  const char* policy = std::getenv("OMP_WAIT_POLICY");
  volatile int sink = 0;
  for (int round = 0; round < rounds; ++round) {
    const auto t0 = std::chrono::steady_clock::now();
    for (int i = 0; i < jobs; ++i) {
#pragma omp parallel num_threads(threads)
      {
        if (omp_get_thread_num() == 0) sink = sink + 1;
      }
    }
    const auto t1 = std::chrono::steady_clock::now();
    for (int i = 0; i < jobs; ++i) {
      spqr::cpu::ParallelRun(threads, [&](int t, int) {
        if (t == 0) sink = sink + 1;
      });
    }
    const auto t2 = std::chrono::steady_clock::now();
    std::printf(
        "{\"round\": %d, \"threads\": %d, \"jobs\": %d, \"omp_wait_policy\": \"%s\", "
        "\"openmp_region_us\": %.3f, \"worker_pool_job_us\": %.3f}\n",
        round, threads, jobs, policy ? policy : "(unset)", MicrosPerJob(t0, t1, jobs),
        MicrosPerJob(t1, t2, jobs));
  }
  return 0;
}
