#include "engine/backend/cpu/worker_pool.h"

#include <pthread.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <mutex>
#include <thread>

#if defined(__x86_64__) || defined(__i386__)
#include <immintrin.h>
#define SPQR_CPU_RELAX() _mm_pause()
#else
#define SPQR_CPU_RELAX() std::this_thread::yield()
#endif

namespace spqr::cpu {
namespace {

// True on pool workers (always) and on a caller while it runs its own share of a job: a
// ParallelRun from there runs inline instead of waiting on workers that are busy with this job.
thread_local bool tls_in_job = false;

void RunInline(int n, absl::FunctionRef<void(int, int)> fn) {
  for (int t = 0; t < n; ++t) fn(t, n);
}

class Pool {
 public:
  static Pool& Get() {
    // Never destroyed: the workers may still be blocked in it when the process exits.
    static Pool* const first = [] {
      instance_.store(new Pool, std::memory_order_release);
      // A forked child has none of the parent's workers (only the forking thread survives):
      // it starts a pool of its own instead of waiting forever on workers that do not exist.
      pthread_atfork(nullptr, nullptr,
                     [] { instance_.store(new Pool, std::memory_order_release); });
      return instance_.load(std::memory_order_acquire);
    }();
    (void)first;
    return *instance_.load(std::memory_order_acquire);
  }

  void Run(int n, absl::FunctionRef<void(int, int)> fn) {
    std::unique_lock<std::mutex> lock(run_mu_, std::try_to_lock);
    if (!lock.owns_lock()) return RunInline(n, fn);  // another thread's job is running
    Grow(n - 1);
    job_ = &fn;
    pending_.store(static_cast<uint32_t>(n - 1), std::memory_order_relaxed);
    // One word carries the generation and the job's thread count, so a worker that does not take
    // part (index >= n) reads both consistently and never touches job_.
    const uint32_t generation = (state_.load(std::memory_order_relaxed) >> 8) + 1;
    state_.store((generation << 8) | static_cast<uint32_t>(n), std::memory_order_release);
    state_.notify_all();  // no system call unless a worker is blocked
    tls_in_job = true;
    fn(0, n);
    tls_in_job = false;
    // Spin while the workers are likely still busy, then block: a worker descheduled by a busy
    // machine needs this core more than this thread does.
    const uint32_t left = SpinUntil(pending_, 0u, SpinLimit(n));
    if (left != 0) {
      for (uint32_t p = pending_.load(std::memory_order_acquire); p != 0;
           p = pending_.load(std::memory_order_acquire)) {
        pending_.wait(p, std::memory_order_acquire);
      }
    }
    job_ = nullptr;
  }

  int workers() const { return started_.load(std::memory_order_relaxed); }

 private:
  Pool() = default;

  // Starts workers 1..count (called with run_mu_ held, so state_ does not change meanwhile).
  void Grow(int count) {
    for (int index = started_.load(std::memory_order_relaxed) + 1; index <= count; ++index) {
      const uint32_t seen = state_.load(std::memory_order_relaxed);
      std::thread([this, index, seen] { WorkerLoop(index, seen); }).detach();
      started_.store(index, std::memory_order_relaxed);
    }
  }

  // How long the threads of an n-thread job spin. With more threads than cores a spinning thread
  // only delays the one it waits for (the same throttling libgomp applies): then nobody spins.
  static std::chrono::microseconds SpinLimit(int n) {
    static const int cores = std::max(1, static_cast<int>(std::thread::hardware_concurrency()));
    return std::chrono::microseconds(n <= cores ? kSpinMicros : 0);
  }

  // Spins until `a` differs from `value` (returns the new value) or `limit` passes (returns
  // `value`).
  template <typename T>
  static T SpinWhileEqual(const std::atomic<T>& a, T value, std::chrono::microseconds limit) {
    using Clock = std::chrono::steady_clock;
    if (limit.count() == 0) return a.load(std::memory_order_acquire);
    const Clock::time_point deadline = Clock::now() + limit;
    for (int spins = 1;; ++spins) {
      const T v = a.load(std::memory_order_acquire);
      if (v != value) return v;
      SPQR_CPU_RELAX();
      if (spins % 64 == 0 && Clock::now() > deadline) return value;
    }
  }
  // Spins until `a` equals `target` or `limit` passes; returns the last value seen.
  template <typename T>
  static T SpinUntil(const std::atomic<T>& a, T target, std::chrono::microseconds limit) {
    using Clock = std::chrono::steady_clock;
    const Clock::time_point deadline = Clock::now() + limit;
    for (int spins = 1;; ++spins) {
      const T v = a.load(std::memory_order_acquire);
      if (v == target) return v;
      if (spins % 64 == 0 && Clock::now() > deadline) return v;
      SPQR_CPU_RELAX();
    }
  }

  // Waits for the job after `seen`. A worker that took part in `seen` spins first (the next job
  // of a decode step follows within microseconds); one that did not goes straight to sleep.
  uint32_t WaitForChange(int index, uint32_t seen) {
    const int n = static_cast<int>(seen & 0xffu);
    const uint32_t s =
        SpinWhileEqual(state_, seen, index < n ? SpinLimit(n) : std::chrono::microseconds(0));
    if (s != seen) return s;
    for (;;) {
      state_.wait(seen, std::memory_order_acquire);
      const uint32_t v = state_.load(std::memory_order_acquire);
      if (v != seen) return v;
    }
  }

  void WorkerLoop(int index, uint32_t seen) {
    tls_in_job = true;
    for (;;) {
      seen = WaitForChange(index, seen);
      const int n = static_cast<int>(seen & 0xffu);
      if (index >= n) continue;
      (*job_)(index, n);
      // The last worker out wakes a caller that stopped spinning (no system call otherwise).
      if (pending_.fetch_sub(1, std::memory_order_acq_rel) == 1) pending_.notify_all();
    }
  }

  static inline std::atomic<Pool*> instance_{nullptr};
  std::mutex run_mu_;  // one job at a time
  std::atomic<uint32_t> state_{0};
  std::atomic<uint32_t> pending_{0};
  std::atomic<int> started_{0};
  const absl::FunctionRef<void(int, int)>* job_ = nullptr;  // valid while pending_ > 0
};

}  // namespace

void ParallelRun(int num_threads, absl::FunctionRef<void(int thread, int num_threads)> fn) {
  const int n = std::min(num_threads, kMaxThreads);
  if (n <= 1) {
    fn(0, 1);
    return;
  }
  if (tls_in_job) return RunInline(n, fn);
  Pool::Get().Run(n, fn);
}

void ParallelForDynamic(int num_threads, int64_t items,
                        absl::FunctionRef<void(int64_t item, int thread)> fn) {
  if (items <= 0) return;
  const int n = static_cast<int>(std::clamp<int64_t>(num_threads, 1, items));
  std::atomic<int64_t> next{0};
  ParallelRun(n, [&](int t, int) {
    for (int64_t i = next.fetch_add(1, std::memory_order_relaxed); i < items;
         i = next.fetch_add(1, std::memory_order_relaxed)) {
      fn(i, t);
    }
  });
}

int WorkerPoolThreads() { return Pool::Get().workers(); }

}  // namespace spqr::cpu
