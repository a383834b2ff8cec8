// A fixed set of worker threads for the request work that can take long: tokenizing prompts and
// score texts. gRPC callback threads only parse and validate (bounded, cheap) and hand the rest
// here, so a large request never stalls the threads that accept other calls, and the engine thread
// never tokenizes.
#pragma once

#include <deque>
#include <functional>
#include <thread>
#include <vector>

#include "absl/synchronization/mutex.h"

namespace spqr {

class WorkPool {
 public:
  // Starts `threads` workers (at least 1).
  explicit WorkPool(int threads);
  // Runs every task already posted, then joins the workers.
  ~WorkPool();
  WorkPool(const WorkPool&) = delete;
  WorkPool& operator=(const WorkPool&) = delete;

  // Queues `task`; tasks start in posting order on whichever worker is free.
  void Post(std::function<void()> task);
  // Tasks posted and not yet started.
  size_t queued();

 private:
  void Run();

  absl::Mutex mu_;
  std::deque<std::function<void()>> tasks_ ABSL_GUARDED_BY(mu_);
  bool stopping_ ABSL_GUARDED_BY(mu_) = false;
  std::vector<std::thread> workers_;
};

}  // namespace spqr
