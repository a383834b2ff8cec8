// CPU execution harness for our CUDA kernels (docs/cuda-harness.md): the scheduler that runs a
// grid on the host when a kernel header is compiled by g++ instead of nvcc.
//
// What it does: a launch runs synchronously, block after block, on the calling OS thread. Each
// block's threads are fibers (Boost.Context fcontext) that run until they block: at
// __syncthreads (a block barrier), at a warp intrinsic (an exchange among the lanes of its mask,
// no lockstep assumed) or at exit. The order in which threads (and blocks) are resumed is
// forward, reverse or a seeded shuffle (SetSchedule), so that a kernel missing a barrier reads
// another thread's data before it is written in at least one order and gives a different result.
// Static __shared__ variables (SPQR_SHARED_ARRAY) and dynamic shared memory are fresh per block,
// filled with 0xff bytes (NaN as fp32) so that a read before any write cannot look plausible.
//
// What it aborts on (with a message naming kernel, block, thread and source line): a divergent
// __syncthreads (some threads of the block exited while others wait, or threads wait at different
// __syncthreads), a warp intrinsic whose mask omits the calling lane, names lanes that do not
// exist or have exited, or whose lanes call different intrinsics; any other deadlock; more than
// 48 KiB of static shared memory.
//
// What it cannot tell: timing, occupancy, coalescing, bank conflicts, register pressure, races
// between concurrently running blocks (blocks run one at a time; atomics are trivially atomic),
// the weak memory model within a block (every write is visible at once), and anything of a PTX
// instruction beyond what its host reference (engine/backend/cuda/ptx.cuh) encodes. Device math
// functions are the host libm's (rsqrtf, __expf, sincosf may differ from the GPU's in the last
// bits; the fast intrinsics far more), so tests compare with tolerances, not bits, wherever the
// GPU's own result would differ.
#pragma once

#include <driver_types.h>
#include <vector_types.h>

#include <cstddef>
#include <cstdint>
#include <source_location>
#include <string>

namespace spqr::emu {

// ---- Control (tests, tools) ----

enum class ThreadOrder { kForward, kReverse, kShuffle };

struct Schedule {
  ThreadOrder order = ThreadOrder::kForward;
  uint64_t seed = 0;  // kShuffle: threads and blocks are reshuffled from this seed
};

// The schedule of every later launch in this process. The initial one comes from the environment
// variable SPQR_CUDA_EMU_ORDER ("forward", "reverse" or "shuffle:<seed>"; forward if unset).
void SetSchedule(const Schedule& schedule);
Schedule GetSchedule();
// "forward", "reverse" or "shuffle:<seed>" (also the format of SPQR_CUDA_EMU_ORDER).
std::string ScheduleName(const Schedule& schedule);

// Sets a schedule for its lifetime and restores the previous one.
class ScopedSchedule {
 public:
  explicit ScopedSchedule(const Schedule& schedule) : previous_(GetSchedule()) {
    SetSchedule(schedule);
  }
  ~ScopedSchedule() { SetSchedule(previous_); }
  ScopedSchedule(const ScopedSchedule&) = delete;
  ScopedSchedule& operator=(const ScopedSchedule&) = delete;

 private:
  Schedule previous_;
};

// Makes the emulated device behave as after a sticky error (cudaErrorIllegalAddress and the like,
// which a real context never recovers from): until it is set back to cudaSuccess (which a real
// device cannot do; tests only), every stream/event/device synchronization, every copy and
// cudaGetLastError/cudaPeekAtLastError return `error`, so a kernel launch reports it too.
void SetStickyError(cudaError_t error);

// Counters since process start (tests check that kernels actually ran under the harness).
struct Stats {
  uint64_t launches = 0;
  uint64_t blocks = 0;
  uint64_t threads = 0;
};
Stats GetStats();

// ---- Used by the launch macro and the device-side emulation (engine/backend/cuda/emu/device.h)

// Runs `body(closure)` as every thread of the grid. Returns cudaErrorInvalidConfiguration for a
// launch a GPU would refuse (zero or oversized dimensions, more than 1024 threads per block,
// more dynamic shared memory than the kernel may use) without running anything, else cudaSuccess.
cudaError_t RunGrid(const char* kernel_name, const void* kernel_id, dim3 grid, dim3 block,
                    size_t dynamic_smem_bytes, void (*body)(void*), void* closure);

// cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, bytes) equivalent.
cudaError_t SetMaxDynamicSharedBytes(const void* kernel_id, int bytes);

// The running thread's coordinates; abort when called outside a kernel.
const uint3& ThreadIdx();
const uint3& BlockIdx();
const dim3& BlockDim();
const dim3& GridDim();

// __syncthreads; returns how many threads of the block passed a non-zero predicate.
int SyncThreadsCount(int predicate, const std::source_location& site);

// The block's copy of the static shared variable identified by `tag` (the address of a static
// object unique to the declaration), `bytes` long, 0xff-filled when the block first reaches it.
void* StaticShared(const void* tag, size_t bytes, const char* name);
// The block's dynamic shared memory (the launch's smem bytes, 0xff-filled).
void* DynamicShared();

// One warp-collective step for the calling lane: publishes `value`, waits until every lane of
// `mask` has published (all calling the same intrinsic `op`), copies the 32 published values to
// `lanes` (entries of lanes outside the mask are unspecified), and returns once every lane of the
// mask has taken its copy. Returns the caller's lane id.
int WarpExchange(const char* op, unsigned mask, uint64_t value, uint64_t* lanes,
                 const std::source_location& site);

// cp.async for the calling thread (engine/backend/cuda/ptx.cuh): Issue reads `bytes` from `src`
// now and queues the write to `dst`; Commit closes the current group; Wait(n) performs the writes
// of all but the n most recently committed groups. Writes never waited for are dropped at exit.
void CpAsyncIssue(void* dst, const void* src, int bytes);
void CpAsyncCommit();
void CpAsyncWait(int n);

// Prints "CUDA harness: <message>" with the kernel, block and thread when called from a kernel,
// then aborts.
[[noreturn]] void Fail(const std::string& message);

}  // namespace spqr::emu
