// The CPU kernels' persistent thread pool (engine/backend/cpu/worker_pool.h).
#include "engine/backend/cpu/worker_pool.h"

#include <gtest/gtest.h>
#include <signal.h>
#include <sys/wait.h>
#include <unistd.h>

#include <atomic>
#include <chrono>
#include <mutex>
#include <set>
#include <thread>
#include <vector>

namespace spqr::cpu {
namespace {

TEST(WorkerPoolTest, EveryThreadIndexRunsExactlyOnceWithTheRightCount) {
  for (int n : {1, 2, 3, 5, 8}) {
    std::vector<std::atomic<int>> calls(static_cast<size_t>(n));
    std::atomic<int> wrong_count{0};
    ParallelRun(n, [&](int t, int nt) {
      if (nt != n) wrong_count.fetch_add(1);
      calls[static_cast<size_t>(t)].fetch_add(1);
    });
    EXPECT_EQ(wrong_count.load(), 0) << n;
    for (int t = 0; t < n; ++t) EXPECT_EQ(calls[static_cast<size_t>(t)].load(), 1) << n << " " << t;
  }
  EXPECT_GE(WorkerPoolThreads(), 7);  // grew to the largest job (8 threads = caller + 7)
}

TEST(WorkerPoolTest, CallerIsThreadZeroAndWorkersAreOtherThreads) {
  std::mutex mu;
  std::set<std::thread::id> ids;
  std::thread::id zero;
  ParallelRun(3, [&](int t, int) {
    std::lock_guard<std::mutex> lock(mu);
    ids.insert(std::this_thread::get_id());
    if (t == 0) zero = std::this_thread::get_id();
  });
  EXPECT_EQ(zero, std::this_thread::get_id());
  EXPECT_EQ(ids.size(), 3u);  // really concurrent threads, not a loop on the caller
}

TEST(WorkerPoolTest, ThreadsAreReusedAcrossJobs) {
  std::mutex mu;
  std::set<std::thread::id> ids;
  for (int i = 0; i < 200; ++i) {
    ParallelRun(2, [&](int, int) {
      std::lock_guard<std::mutex> lock(mu);
      ids.insert(std::this_thread::get_id());
    });
  }
  EXPECT_EQ(ids.size(), 2u);  // the caller and one persistent worker, not a thread per job
}

TEST(WorkerPoolTest, ManyQuickJobsAllComplete) {
  // Exercises the hand-off between back-to-back jobs (a worker still leaving job k must not run
  // job k + 1 twice or miss it).
  std::atomic<int64_t> sum{0};
  for (int i = 0; i < 5000; ++i) {
    ParallelRun(2 + i % 3, [&](int t, int) { sum.fetch_add(t + 1); });
  }
  int64_t expected = 0;
  for (int i = 0; i < 5000; ++i) {
    const int n = 2 + i % 3;
    expected += n * (n + 1) / 2;
  }
  EXPECT_EQ(sum.load(), expected);
}

TEST(WorkerPoolTest, JobsAfterTheWorkersFellAsleepStillRun) {
  std::atomic<int> calls{0};
  ParallelRun(2, [&](int, int) { calls.fetch_add(1); });
  // Longer than kSpinMicros: the worker is now blocked on the futex and must be woken.
  std::this_thread::sleep_for(std::chrono::milliseconds(20));
  ParallelRun(2, [&](int, int) { calls.fetch_add(1); });
  EXPECT_EQ(calls.load(), 4);
}

TEST(WorkerPoolTest, NestedCallsRunInlineAndComplete) {
  std::atomic<int> inner{0};
  ParallelRun(2, [&](int, int) {
    ParallelRun(3, [&](int, int nt) {
      EXPECT_EQ(nt, 3);
      inner.fetch_add(1);
    });
  });
  EXPECT_EQ(inner.load(), 6);
}

TEST(WorkerPoolTest, ConcurrentCallersFromTwoThreadsBothComplete) {
  std::atomic<int> calls{0};
  auto caller = [&] {
    for (int i = 0; i < 2000; ++i) ParallelRun(2, [&](int, int) { calls.fetch_add(1); });
  };
  std::thread a(caller), b(caller);
  a.join();
  b.join();
  EXPECT_EQ(calls.load(), 2 * 2000 * 2);
}

TEST(WorkerPoolTest, AForkedChildRunsJobsWithItsOwnWorkers) {
  std::atomic<int> calls{0};
  ParallelRun(2, [&](int, int) { calls.fetch_add(1); });  // the parent's pool has a worker now
  const pid_t pid = fork();
  ASSERT_GE(pid, 0);
  if (pid == 0) {
    // The parent's worker does not exist here: this would wait forever on the old pool.
    std::atomic<int> child_calls{0};
    ParallelRun(2, [&](int, int) { child_calls.fetch_add(1); });
    _exit(child_calls.load() == 2 ? 0 : 1);
  }
  int status = 0;
  for (int waited_ms = 0; waited_ms < 10000; waited_ms += 10) {
    if (waitpid(pid, &status, WNOHANG) == pid) break;
    std::this_thread::sleep_for(std::chrono::milliseconds(10));
    if (waited_ms + 10 >= 10000) {
      kill(pid, SIGKILL);
      waitpid(pid, &status, 0);
      FAIL() << "the forked child hung in ParallelRun";
    }
  }
  ASSERT_TRUE(WIFEXITED(status));
  EXPECT_EQ(WEXITSTATUS(status), 0);
  ParallelRun(2, [&](int, int) { calls.fetch_add(1); });  // the parent's pool still works
  EXPECT_EQ(calls.load(), 4);
}

TEST(WorkerPoolTest, DynamicForCoversEveryItemOnce) {
  for (int64_t items : {0, 1, 2, 7, 1000}) {
    std::vector<std::atomic<int>> seen(static_cast<size_t>(items));
    ParallelForDynamic(3, items,
                       [&](int64_t i, int) { seen[static_cast<size_t>(i)].fetch_add(1); });
    for (int64_t i = 0; i < items; ++i) EXPECT_EQ(seen[static_cast<size_t>(i)].load(), 1) << i;
  }
}

TEST(WorkerPoolTest, StaticForSplitsIntoContiguousCoveringRanges) {
  for (int64_t items : {0, 1, 2, 5, 1001}) {
    std::vector<std::atomic<int>> seen(static_cast<size_t>(items));
    std::atomic<int> ranges{0};
    ParallelForStatic(4, items, [&](int64_t b, int64_t e) {
      EXPECT_LT(b, e);
      ranges.fetch_add(1);
      for (int64_t i = b; i < e; ++i) seen[static_cast<size_t>(i)].fetch_add(1);
    });
    for (int64_t i = 0; i < items; ++i) EXPECT_EQ(seen[static_cast<size_t>(i)].load(), 1) << i;
    EXPECT_EQ(ranges.load(), static_cast<int>(std::min<int64_t>(items, 4)));
  }
}

}  // namespace
}  // namespace spqr::cpu
