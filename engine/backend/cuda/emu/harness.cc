#include "engine/backend/cuda/emu/harness.h"

#include <sys/mman.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <boost/context/detail/fcontext.hpp>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <memory>
#include <mutex>
#include <numeric>
#include <random>
#include <unordered_map>
#include <utility>
#include <vector>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"

#if defined(__SANITIZE_ADDRESS__)
#include <sanitizer/asan_interface.h>
#include <sanitizer/common_interface_defs.h>
#define SPQR_EMU_ASAN 1
#else
#define SPQR_EMU_ASAN 0
#endif

namespace spqr::emu {
namespace {

namespace ctx = boost::context::detail;

// Stack per fiber: the kernels' frames are small, but ASan's redzones and libm calls need room.
constexpr size_t kStackBytes = SPQR_EMU_ASAN ? 512 * 1024 : 128 * 1024;
constexpr unsigned kMaxThreadsPerBlock = 1024;
constexpr size_t kMaxStaticSharedBytes = 48 * 1024;
constexpr size_t kDefaultMaxDynamicSharedBytes = 48 * 1024;
constexpr size_t kOptInMaxSharedBytes = 227 * 1024;  // sm_90 per-block maximum
constexpr unsigned char kPoison = 0xff;

// ---- Schedule and statistics (process-wide) ----

Schedule ScheduleFromEnvironment() {
  Schedule s;
  const char* env = std::getenv("SPQR_CUDA_EMU_ORDER");
  if (env == nullptr || std::strcmp(env, "forward") == 0 || *env == '\0') return s;
  if (std::strcmp(env, "reverse") == 0) {
    s.order = ThreadOrder::kReverse;
    return s;
  }
  if (std::strncmp(env, "shuffle", 7) == 0) {
    s.order = ThreadOrder::kShuffle;
    if (env[7] == ':') s.seed = std::strtoull(env + 8, nullptr, 10);
    return s;
  }
  std::fprintf(stderr,
               "CUDA harness: SPQR_CUDA_EMU_ORDER='%s' is not forward, reverse or "
               "shuffle:<seed>\n",
               env);
  std::abort();
}

std::mutex g_mutex;  // guards g_schedule and g_max_dynamic
Schedule g_schedule = ScheduleFromEnvironment();
std::unordered_map<const void*, size_t> g_max_dynamic;
std::atomic<uint64_t> g_launches{0}, g_blocks{0}, g_threads{0};

// ---- Fiber stacks: mmap'd once per OS thread and reused, each with a guard page below it ----

class StackPool {
 public:
  ~StackPool() {
    for (void* base : bases_) munmap(base, kStackBytes + page_);
  }
  // Bottom (lowest address) of stack i, creating stacks up to i.
  char* Get(size_t i) {
    while (bases_.size() <= i) {
      void* base = mmap(nullptr, kStackBytes + page_, PROT_READ | PROT_WRITE,
                        MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
      if (base == MAP_FAILED) {
        std::fprintf(stderr, "CUDA harness: cannot map a %zu-byte fiber stack\n", kStackBytes);
        std::abort();
      }
      mprotect(base, page_, PROT_NONE);  // overflow faults instead of corrupting a neighbour
      bases_.push_back(base);
    }
    return static_cast<char*>(bases_[i]) + page_;
  }

 private:
  size_t page_ = static_cast<size_t>(sysconf(_SC_PAGESIZE));
  std::vector<void*> bases_;
};

// ---- Block state ----

enum class Status { kRunnable, kAtBarrier, kInWarpOp, kExited };

struct PendingCopy {
  void* dst;
  unsigned char data[16];
  int bytes;
  int64_t group;  // -1 while not committed
};

struct Thread {
  uint3 idx{};
  int linear = 0;
  Status status = Status::kRunnable;
  const char* op = nullptr;  // what it waits at (for messages)
  std::source_location site;
  unsigned mask = 0;                // of the warp op it waits in
  int predicate = 0;                // its __syncthreads_count argument
  std::vector<PendingCopy> copies;  // cp.async not yet waited for
  int64_t committed_groups = 0;
  ctx::fcontext_t self = nullptr;    // the suspended fiber
  ctx::fcontext_t caller = nullptr;  // the scheduler, while the fiber runs
  char* stack = nullptr;
  void* fake_stack = nullptr;  // ASan bookkeeping
};

struct WarpGroup {
  unsigned mask;
  const char* op;
  std::source_location site;
  unsigned arrived;
  unsigned departed;
  uint64_t id;
};

struct Warp {
  uint64_t slot[32];
  std::vector<WarpGroup> groups;
  uint64_t next_id = 0;
};

struct Block {
  const char* kernel = nullptr;
  uint3 idx{};
  dim3 dim, grid;
  int num_threads = 0;
  std::vector<Thread> threads;
  std::vector<Warp> warps;
  std::vector<std::pair<const void*, std::unique_ptr<unsigned char[]>>> statics;
  size_t static_bytes = 0;
  std::unique_ptr<unsigned char[]> dynamic;
  uint64_t progress = 0;  // changes whenever some thread's state changes
  int barrier_count = 0;  // threads with a non-zero predicate at the last released barrier
  void (*body)(void*) = nullptr;
  void* closure = nullptr;
};

thread_local Block* t_block = nullptr;
thread_local Thread* t_thread = nullptr;
thread_local StackPool t_stacks;
// The scheduler's own stack, as ASan knows it, for switching back to it.
thread_local const void* t_sched_stack_bottom = nullptr;
thread_local size_t t_sched_stack_size = 0;

std::string Dim(const uint3& v) { return absl::StrFormat("(%u,%u,%u)", v.x, v.y, v.z); }
std::string Site(const std::source_location& s) {
  std::string file = s.file_name();
  const size_t engine = file.rfind("/engine/");
  const size_t tests = file.rfind("/tests/");
  const size_t cut = std::max(engine == std::string::npos ? 0 : engine + 1,
                              tests == std::string::npos ? 0 : tests + 1);
  return absl::StrCat(file.substr(cut), ":", s.line());
}

Thread& Current(const char* what) {
  if (t_thread == nullptr) Fail(absl::StrCat(what, " called outside a kernel"));
  return *t_thread;
}

// ---- Switching (with the annotations ASan needs to follow a stack switch) ----

void StartSwitch(void** fake_stack_save, const void* bottom, size_t size) {
#if SPQR_EMU_ASAN
  __sanitizer_start_switch_fiber(fake_stack_save, bottom, size);
#else
  (void)fake_stack_save, (void)bottom, (void)size;
#endif
}

void FinishSwitch(void* fake_stack_save, const void** old_bottom, size_t* old_size) {
#if SPQR_EMU_ASAN
  __sanitizer_finish_switch_fiber(fake_stack_save, old_bottom, old_size);
#else
  (void)fake_stack_save, (void)old_bottom, (void)old_size;
#endif
}

// From a fiber back to the scheduler; returns when the scheduler resumes this fiber.
void Yield(Thread& th, bool exiting) {
  StartSwitch(exiting ? nullptr : &th.fake_stack, t_sched_stack_bottom, t_sched_stack_size);
  ctx::transfer_t t = ctx::jump_fcontext(th.caller, nullptr);
  th.caller = t.fctx;
  FinishSwitch(th.fake_stack, &t_sched_stack_bottom, &t_sched_stack_size);
}

void FiberMain(ctx::transfer_t t) {
  Thread& th = *static_cast<Thread*>(t.data);
  th.caller = t.fctx;
  FinishSwitch(nullptr, &t_sched_stack_bottom, &t_sched_stack_size);
  t_block->body(t_block->closure);
  th.status = Status::kExited;
  ++t_block->progress;
  Yield(th, /*exiting=*/true);
  std::abort();  // an exited fiber is never resumed
}

void Resume(Thread& th) {
  t_thread = &th;
  void* fake = nullptr;
  StartSwitch(&fake, th.stack, kStackBytes);
  ctx::transfer_t t = ctx::jump_fcontext(th.self, &th);
  th.self = t.fctx;
  FinishSwitch(fake, nullptr, nullptr);
  t_thread = nullptr;
}

// ---- Diagnostics ----

std::string Where(const Block& b, const Thread* th) {
  std::string s = absl::StrCat("kernel ", b.kernel, ", block ", Dim(b.idx));
  if (th != nullptr) {
    absl::StrAppend(&s, ", thread ", Dim(th->idx), " (warp ", th->linear / 32, " lane ",
                    th->linear % 32, ")");
  }
  return s;
}

// One line per kind of wait (op and site), with a count and the first thread.
std::string DescribeThreads(const Block& b) {
  struct Entry {
    std::string key;
    int count;
    const Thread* first;
  };
  std::vector<Entry> entries;
  for (const Thread& th : b.threads) {
    std::string key;
    switch (th.status) {
      case Status::kExited:
        key = "exited";
        break;
      case Status::kRunnable:
        key = "runnable";
        break;
      case Status::kAtBarrier:
        key = absl::StrCat("wait at __syncthreads (", Site(th.site), ")");
        break;
      case Status::kInWarpOp:
        key = absl::StrFormat("wait in %s (%s) with mask 0x%08x", th.op, Site(th.site), th.mask);
        break;
    }
    auto it =
        std::find_if(entries.begin(), entries.end(), [&](const Entry& e) { return e.key == key; });
    if (it == entries.end()) {
      entries.push_back({key, 1, &th});
    } else {
      ++it->count;
    }
  }
  std::string out;
  for (const Entry& e : entries) {
    absl::StrAppendFormat(&out, "\n  %d thread(s) %s, e.g. thread %s", e.count, e.key,
                          Dim(e.first->idx));
  }
  return out;
}

[[noreturn]] void FailBlock(const Block& b, const std::string& message) {
  std::fprintf(stderr, "CUDA harness: %s in %s%s\n", message.c_str(), Where(b, nullptr).c_str(),
               DescribeThreads(b).c_str());
  std::fflush(stderr);
  std::abort();
}

// ---- Scheduling ----

std::vector<int> Order(int n, const Schedule& s, std::mt19937_64& rng) {
  std::vector<int> order(n);
  std::iota(order.begin(), order.end(), 0);
  if (s.order == ThreadOrder::kReverse) std::reverse(order.begin(), order.end());
  if (s.order == ThreadOrder::kShuffle) std::shuffle(order.begin(), order.end(), rng);
  return order;
}

void RunBlock(Block& b, const Schedule& schedule, uint64_t block_linear) {
  const int n = b.num_threads;
  b.threads.assign(n, Thread{});
  b.warps.assign((n + 31) / 32, Warp{});
  for (Warp& w : b.warps) std::memset(w.slot, kPoison, sizeof(w.slot));
  b.statics.clear();
  b.static_bytes = 0;
  b.progress = 0;
  for (int i = 0; i < n; ++i) {
    Thread& th = b.threads[i];
    th.linear = i;
    th.idx.x = i % b.dim.x;
    th.idx.y = (i / b.dim.x) % b.dim.y;
    th.idx.z = i / (b.dim.x * b.dim.y);
    th.stack = t_stacks.Get(i);
#if SPQR_EMU_ASAN
    // A fiber that ran here before never returned: its frames' redzones are still poisoned.
    ASAN_UNPOISON_MEMORY_REGION(th.stack, kStackBytes);
#endif
    th.self = ctx::make_fcontext(th.stack + kStackBytes, kStackBytes, FiberMain);
  }
  std::mt19937_64 rng(schedule.seed * 0x9e3779b97f4a7c15ull + block_linear);
  std::vector<int> order = Order(n, schedule, rng);
  int exited = 0;
  while (true) {
    const uint64_t before = b.progress;
    for (int i : order) {
      Thread& th = b.threads[i];
      if (th.status == Status::kRunnable || th.status == Status::kInWarpOp) Resume(th);
    }
    int at_barrier = 0;
    exited = 0;
    for (const Thread& th : b.threads) {
      at_barrier += th.status == Status::kAtBarrier;
      exited += th.status == Status::kExited;
    }
    if (exited == n) return;
    if (at_barrier + exited == n) {
      if (exited > 0) {
        FailBlock(b, absl::StrFormat("divergent __syncthreads: %d thread(s) exited while %d wait "
                                     "at the barrier",
                                     exited, at_barrier));
      }
      for (const Thread& th : b.threads) {
        if (th.site.line() != b.threads[0].site.line() ||
            std::strcmp(th.site.file_name(), b.threads[0].site.file_name()) != 0) {
          FailBlock(b, "divergent __syncthreads: threads wait at different barriers");
        }
      }
      // No thread can reach the next barrier before every thread has left this one, so all of
      // them read this count before it changes.
      b.barrier_count = 0;
      for (Thread& th : b.threads) {
        b.barrier_count += th.predicate != 0;
        th.status = Status::kRunnable;
      }
      ++b.progress;
    } else if (b.progress == before) {
      FailBlock(b, "deadlock: no thread can proceed");
    }
    if (schedule.order == ThreadOrder::kShuffle) std::shuffle(order.begin(), order.end(), rng);
  }
}

}  // namespace

// ---- Public API ----

void SetSchedule(const Schedule& schedule) {
  std::lock_guard<std::mutex> lock(g_mutex);
  g_schedule = schedule;
}

Schedule GetSchedule() {
  std::lock_guard<std::mutex> lock(g_mutex);
  return g_schedule;
}

std::string ScheduleName(const Schedule& s) {
  switch (s.order) {
    case ThreadOrder::kForward:
      return "forward";
    case ThreadOrder::kReverse:
      return "reverse";
    case ThreadOrder::kShuffle:
      return absl::StrCat("shuffle:", s.seed);
  }
  return "?";
}

Stats GetStats() { return {g_launches.load(), g_blocks.load(), g_threads.load()}; }

cudaError_t SetMaxDynamicSharedBytes(const void* kernel_id, int bytes) {
  if (bytes < 0 || static_cast<size_t>(bytes) > kOptInMaxSharedBytes) return cudaErrorInvalidValue;
  std::lock_guard<std::mutex> lock(g_mutex);
  g_max_dynamic[kernel_id] = static_cast<size_t>(bytes);
  return cudaSuccess;
}

cudaError_t RunGrid(const char* kernel_name, const void* kernel_id, dim3 grid, dim3 block,
                    size_t dynamic_smem_bytes, void (*body)(void*), void* closure) {
  if (t_block != nullptr) {
    Fail(absl::StrCat("kernel ", kernel_name,
                      " launched from inside a kernel (dynamic "
                      "parallelism is not emulated)"));
  }
  const uint64_t threads = uint64_t{block.x} * block.y * block.z;
  if (threads == 0 || threads > kMaxThreadsPerBlock || block.x > 1024 || block.y > 1024 ||
      block.z > 64 || grid.x == 0 || grid.y == 0 || grid.z == 0 || grid.x > 0x7fffffffu ||
      grid.y > 65535 || grid.z > 65535) {
    return cudaErrorInvalidConfiguration;
  }
  Schedule schedule;
  size_t max_dynamic = kDefaultMaxDynamicSharedBytes;
  {
    std::lock_guard<std::mutex> lock(g_mutex);
    schedule = g_schedule;
    auto it = g_max_dynamic.find(kernel_id);
    if (it != g_max_dynamic.end()) max_dynamic = it->second;
  }
  if (dynamic_smem_bytes > max_dynamic) return cudaErrorInvalidValue;

  Block b;
  b.kernel = kernel_name;
  b.dim = block;
  b.grid = grid;
  b.num_threads = static_cast<int>(threads);
  b.body = body;
  b.closure = closure;
  const uint64_t num_blocks = uint64_t{grid.x} * grid.y * grid.z;
  std::mt19937_64 rng(schedule.seed);
  std::vector<uint64_t> order;
  if (schedule.order != ThreadOrder::kForward) {
    order.resize(num_blocks);
    std::iota(order.begin(), order.end(), uint64_t{0});
    if (schedule.order == ThreadOrder::kReverse) std::reverse(order.begin(), order.end());
    if (schedule.order == ThreadOrder::kShuffle) std::shuffle(order.begin(), order.end(), rng);
  }
  t_block = &b;
  for (uint64_t k = 0; k < num_blocks; ++k) {
    const uint64_t linear = order.empty() ? k : order[k];
    b.idx.x = static_cast<unsigned>(linear % grid.x);
    b.idx.y = static_cast<unsigned>((linear / grid.x) % grid.y);
    b.idx.z = static_cast<unsigned>(linear / (uint64_t{grid.x} * grid.y));
    // A fresh allocation per block: ASan reports any access past the launch's smem bytes.
    b.dynamic.reset(new unsigned char[dynamic_smem_bytes]);
    std::memset(b.dynamic.get(), kPoison, dynamic_smem_bytes);
    RunBlock(b, schedule, linear);
  }
  t_block = nullptr;
  g_launches.fetch_add(1);
  g_blocks.fetch_add(num_blocks);
  g_threads.fetch_add(num_blocks * threads);
  return cudaSuccess;
}

const uint3& ThreadIdx() { return Current("threadIdx").idx; }
const uint3& BlockIdx() {
  Current("blockIdx");
  return t_block->idx;
}
const dim3& BlockDim() {
  Current("blockDim");
  return t_block->dim;
}
const dim3& GridDim() {
  Current("gridDim");
  return t_block->grid;
}

int SyncThreadsCount(int predicate, const std::source_location& site) {
  Thread& th = Current("__syncthreads");
  th.status = Status::kAtBarrier;
  th.site = site;
  th.predicate = predicate;
  ++t_block->progress;
  Yield(th, false);  // the scheduler resumes it once every thread of the block has arrived
  return t_block->barrier_count;
}

void* StaticShared(const void* tag, size_t bytes, const char* name) {
  Current("__shared__");
  Block& b = *t_block;
  for (auto& [t, data] : b.statics) {
    if (t == tag) return data.get();
  }
  b.static_bytes += bytes;
  if (b.static_bytes > kMaxStaticSharedBytes) {
    Fail(absl::StrFormat("static shared memory exceeds %d bytes at %s (nvcc would refuse it)",
                         kMaxStaticSharedBytes, name));
  }
  b.statics.emplace_back(tag, new unsigned char[bytes]);
  std::memset(b.statics.back().second.get(), kPoison, bytes);
  return b.statics.back().second.get();
}

void* DynamicShared() {
  Current("extern __shared__");
  return t_block->dynamic.get();
}

int WarpExchange(const char* op, unsigned mask, uint64_t value, uint64_t* lanes,
                 const std::source_location& site) {
  Thread& th = Current(op);
  Block& b = *t_block;
  const int warp_id = th.linear / 32;
  const int lane = th.linear % 32;
  const int lanes_here = std::min(32, b.num_threads - warp_id * 32);
  const unsigned existing = lanes_here == 32 ? ~0u : (1u << lanes_here) - 1u;
  if (((mask >> lane) & 1u) == 0) {
    Fail(absl::StrFormat("%s at %s: the calling lane %d is not in mask 0x%08x", op, Site(site),
                         lane, mask));
  }
  if ((mask & ~existing) != 0) {
    Fail(absl::StrFormat("%s at %s: mask 0x%08x names lanes that do not exist (this warp has %d)",
                         op, Site(site), mask, lanes_here));
  }
  Warp& w = b.warps[warp_id];
  auto find_group = [&w](auto pred) {
    return std::find_if(w.groups.begin(), w.groups.end(), pred);
  };
  auto it = find_group([mask](const WarpGroup& g) { return g.mask == mask; });
  if (it == w.groups.end()) {
    w.groups.push_back({mask, op, site, 0u, 0u, w.next_id++});
    it = std::prev(w.groups.end());
  } else if (std::strcmp(it->op, op) != 0) {
    Fail(absl::StrFormat(
        "lanes of mask 0x%08x call different warp intrinsics: %s at %s and %s at %s", mask, it->op,
        Site(it->site), op, Site(site)));
  }
  const uint64_t id = it->id;
  w.slot[lane] = value;
  it->arrived |= 1u << lane;
  ++b.progress;
  th.op = op;
  th.site = site;
  th.mask = mask;
  // Wait until every lane of the mask has published.
  while (true) {
    it = find_group([id](const WarpGroup& g) { return g.id == id; });
    if ((it->arrived & mask) == mask) break;
    th.status = Status::kInWarpOp;
    Yield(th, false);
  }
  th.status = Status::kRunnable;
  std::memcpy(lanes, w.slot, sizeof(w.slot));
  it->departed |= 1u << lane;
  ++b.progress;
  if (it->departed == mask) {
    w.groups.erase(it);
    return lane;
  }
  // Wait until every lane has taken its copy, so that no slot is overwritten early.
  while (find_group([id](const WarpGroup& g) { return g.id == id; }) != w.groups.end()) {
    th.status = Status::kInWarpOp;
    Yield(th, false);
  }
  th.status = Status::kRunnable;
  return lane;
}

void CpAsyncIssue(void* dst, const void* src, int bytes) {
  Thread& th = Current("cp.async");
  if (bytes != 4 && bytes != 8 && bytes != 16) Fail("cp.async copies 4, 8 or 16 bytes");
  if (reinterpret_cast<uintptr_t>(dst) % bytes != 0 ||
      reinterpret_cast<uintptr_t>(src) % bytes != 0) {
    Fail(absl::StrFormat("cp.async of %d bytes with a misaligned address", bytes));
  }
  PendingCopy c{dst, {}, bytes, -1};
  std::memcpy(c.data, src, bytes);
  th.copies.push_back(c);
}

void CpAsyncCommit() {
  Thread& th = Current("cp.async.commit_group");
  ++th.committed_groups;
  for (PendingCopy& c : th.copies) {
    if (c.group < 0) c.group = th.committed_groups;
  }
}

void CpAsyncWait(int n) {
  Thread& th = Current("cp.async.wait_group");
  const int64_t last_done = th.committed_groups - n;
  std::vector<PendingCopy> still;
  for (const PendingCopy& c : th.copies) {
    if (c.group >= 0 && c.group <= last_done) {
      std::memcpy(c.dst, c.data, c.bytes);
    } else {
      still.push_back(c);
    }
  }
  th.copies.swap(still);
}

void Fail(const std::string& message) {
  std::string where;
  if (t_block != nullptr) where = absl::StrCat(" in ", Where(*t_block, t_thread));
  std::fprintf(stderr, "CUDA harness: %s%s\n", message.c_str(), where.c_str());
  std::fflush(stderr);
  std::abort();
}

}  // namespace spqr::emu
