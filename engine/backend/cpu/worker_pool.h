// The CPU kernels' threads: one persistent pool per process (issue 11 item 5).
//
// Why not OpenMP parallel regions: a decode step of a small model runs ~10 parallel sections per
// layer (projections, attention, norms), each a few microseconds of work. An OpenMP region costs
// a fork and a join every time (on a quiet 2-core machine ~1.1 us with spinning waits and ~40 us
// with OMP_WAIT_POLICY=passive per empty 2-thread region; docs/cpu-performance.md), which on the
// 11 MB reference model is a sizeable share of the step. The pool's workers are started once, spin
// briefly after each job (kSpinMicros) and then block on a futex, so a job costs one atomic store
// plus one atomic decrement per worker while they are hot, and never burns a core while the server
// is idle.
//
// Contract:
// - ParallelRun(n, fn) calls fn(t, n) once for every t in [0, n), concurrently, the calling thread
//   being t = 0, and returns when all calls have returned. fn must not throw.
// - Calls from inside a job (nested), from a second thread while another job runs, or with n <= 1
//   run the n calls one after the other on the calling thread instead. Every kernel computes a
//   row's result from that row's inputs alone, in a fixed order, so which thread ran which t never
//   changes a result bit (the kernels' thread-count-independence tests cover this).
// - The pool grows to the largest n asked for (n <= kMaxThreads) and never shrinks; its threads
//   exit at process exit. A forked child starts a pool of its own on its first job.
#pragma once

#include <algorithm>
#include <cstdint>
#include <utility>

#include "absl/functional/function_ref.h"

namespace spqr::cpu {

inline constexpr int kMaxThreads = 255;
// How long an idle worker spins before it blocks (a decode step's gaps between sections are far
// shorter; the gap between steps of a busy server is about this long).
inline constexpr int64_t kSpinMicros = 200;

void ParallelRun(int num_threads, absl::FunctionRef<void(int thread, int num_threads)> fn);

// Items [0, items) handed out one at a time from a shared counter (OpenMP's schedule(dynamic, 1)):
// fn(item, thread). Uses min(num_threads, items) threads.
void ParallelForDynamic(int num_threads, int64_t items,
                        absl::FunctionRef<void(int64_t item, int thread)> fn);

// Thread t's contiguous share of [0, items) when split into n near-equal ranges (static split).
inline std::pair<int64_t, int64_t> StaticRange(int64_t items, int t, int n) {
  return {items * t / n, items * (t + 1) / n};
}

// Items [0, items) split into contiguous per-thread ranges (OpenMP's schedule(static)):
// fn(begin, end) per thread. Uses min(num_threads, items) threads.
inline void ParallelForStatic(int num_threads, int64_t items,
                              absl::FunctionRef<void(int64_t begin, int64_t end)> fn) {
  if (items <= 0) return;
  const int n = static_cast<int>(std::clamp<int64_t>(num_threads, 1, items));
  ParallelRun(n, [&](int t, int nt) {
    const auto [b, e] = StaticRange(items, t, nt);
    if (b < e) fn(b, e);
  });
}

// Number of pool threads started so far (tests).
int WorkerPoolThreads();

}  // namespace spqr::cpu
