// Tests of the CPU execution harness itself (engine/backend/cuda/emu, docs/cuda-harness.md): that
// a missing barrier shows up as a mismatch, that divergent barriers and broken warp intrinsics
// abort with a message, that shuffles/ballot follow the CUDA C++ Programming Guide, that shared
// memory is per block and poisoned, that launch errors are reported like a GPU's, and that the
// PTX wrappers' host references follow the PTX ISA.
#include "engine/backend/cuda/emu/harness.h"

#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <cstdint>
#include <cstdlib>
#include <numeric>
#include <random>
#include <vector>

#include "engine/backend/cuda/device_buffer.h"
#include "engine/backend/cuda/device_query.h"
#include "engine/backend/cuda/launch.cuh"
#include "engine/backend/cuda/ptx.cuh"
#include "gmock/gmock.h"
#include "gtest/gtest.h"

namespace spqr {
namespace {

using ::testing::HasSubstr;

const emu::Schedule kOrders[] = {{emu::ThreadOrder::kForward, 0},
                                 {emu::ThreadOrder::kReverse, 0},
                                 {emu::ThreadOrder::kShuffle, 12345}};

// ---- Kernels under test (host-side definitions, as a .cuh would give them) ----

// out[i] = in[(i + 1) % n] through shared memory, with or without the barrier it needs.
template <bool kWithBarrier>
__global__ void RotateThroughShared(const int* in, int* out) {
  SPQR_SHARED_ARRAY(int, s, 64);
  const int i = threadIdx.x;
  s[i] = in[blockIdx.x * blockDim.x + i];
  if (kWithBarrier) __syncthreads();
  out[blockIdx.x * blockDim.x + i] = s[(i + 1) % blockDim.x];
}

// Block sum of 128 floats: warp shuffles, then one shared-memory hop (as RMSNorm reduces).
template <bool kWithBarrier>
__global__ void BlockSum(const float* in, float* out) {
  float v = in[blockIdx.x * 128 + threadIdx.x];
  for (int offset = 16; offset > 0; offset >>= 1) v += __shfl_xor_sync(0xffffffffu, v, offset);
  SPQR_SHARED_ARRAY(float, partial, 4);
  if (threadIdx.x % 32 == 0) partial[threadIdx.x / 32] = v;
  if (kWithBarrier) __syncthreads();
  if (threadIdx.x == 0) out[blockIdx.x] = partial[0] + partial[1] + partial[2] + partial[3];
}

__global__ void ExitBeforeBarrier(int* out) {
  if (threadIdx.x >= 16) return;
  __syncthreads();
  out[threadIdx.x] = 1;
}

__global__ void BarriersAtTwoSites(int* out) {
  if (threadIdx.x % 2 == 0) {
    __syncthreads();
  } else {
    __syncthreads();
  }
  out[threadIdx.x] = 1;
}

__global__ void ShuffleWithExitedLane(int* out) {
  if (threadIdx.x == 5) return;
  out[threadIdx.x] = __shfl_sync(0xffffffffu, static_cast<int>(threadIdx.x), 0);
}

__global__ void ShuffleWithoutOwnLane(int* out) {
  out[threadIdx.x] = __shfl_sync(0x0000ffffu, static_cast<int>(threadIdx.x), 0);
}

__global__ void MixedIntrinsics(int* out) {
  if (threadIdx.x < 16) {
    out[threadIdx.x] = __shfl_sync(0xffffffffu, 1, 0);
  } else {
    out[threadIdx.x] = static_cast<int>(__ballot_sync(0xffffffffu, 1));
  }
}

// For each of 2 warps x widths {32, 16, 8, 4}: the four shuffles of each lane's id * 10 + warp.
__global__ void AllShuffles(const int* src_lane, const int* delta, int* out) {
  const int tid = threadIdx.x;
  const int value = (tid % 32) * 10 + tid / 32;
  int k = 0;
  for (int width = 32; width >= 4; width /= 2) {
    int* o = out + (k++ * 64 + tid) * 4;
    o[0] = __shfl_sync(0xffffffffu, value, src_lane[tid], width);
    o[1] = __shfl_up_sync(0xffffffffu, value, delta[tid / 32], width);
    o[2] = __shfl_down_sync(0xffffffffu, value, delta[tid / 32], width);
    o[3] = __shfl_xor_sync(0xffffffffu, value, delta[tid / 32], width);
  }
}

// Lanes 0-15 of each warp vote among themselves (a partial mask); lanes 16-31 do not take part.
__global__ void PartialBallot(const int* predicate, unsigned* ballot, int* all, int* any) {
  const int tid = threadIdx.x;
  if (tid % 32 >= 16) return;
  ballot[tid] = __ballot_sync(0x0000ffffu, predicate[tid]);
  all[tid] = __all_sync(0x0000ffffu, predicate[tid]);
  any[tid] = __any_sync(0x0000ffffu, predicate[tid]);
}

// A 64-bit and a __half2 value go through a shuffle unchanged.
__global__ void WideShuffle(int64_t* out64, __half2* outh) {
  const int lane = threadIdx.x;
  const int64_t big = (int64_t{lane} << 40) | 7;
  out64[lane] = __shfl_down_sync(0xffffffffu, big, 1);
  outh[lane] = __shfl_xor_sync(0xffffffffu, __floats2half2_rn(lane, -lane), 1);
}

// Each block reads its shared variable before writing it (must be the poison, never another
// block's value), then writes its block id; also reports the first dynamic shared word.
__global__ void SharedPerBlock(int* first_read, int* after, unsigned* dynamic_first) {
  SPQR_SHARED_ARRAY(int, s, 2);
  SPQR_DYNAMIC_SHARED(unsigned, dyn);
  if (threadIdx.x == 0) {
    first_read[blockIdx.x] = s[0];
    dynamic_first[blockIdx.x] = dyn[0];
  }
  __syncthreads();
  if (threadIdx.x == 0) {
    s[0] = static_cast<int>(blockIdx.x);
    dyn[0] = blockIdx.x;
  }
  __syncthreads();
  after[blockIdx.x * blockDim.x + threadIdx.x] = s[0];
}

// Position of each thread in the execution order of its block.
__global__ void RecordOrder(int* counter, int* out) { out[threadIdx.x] = atomicAdd(counter, 1); }

__global__ void Coordinates(uint4* out) {
  const unsigned b = blockIdx.x + gridDim.x * (blockIdx.y + gridDim.y * blockIdx.z);
  const unsigned t = threadIdx.x + blockDim.x * (threadIdx.y + blockDim.y * threadIdx.z);
  out[b * blockDim.x * blockDim.y * blockDim.z + t] = make_uint4(
      threadIdx.x, threadIdx.y, threadIdx.z, blockIdx.x + 100 * blockIdx.y + 10000 * blockIdx.z);
}

__global__ void Noop(int*) {}

// 32 threads each copy 2 x 16 bytes of a 256-int tile into shared memory with cp.async, in two
// commit groups; kMode 0 waits for neither, 1 for the first (wait_group 1), 2 for both.
template <int kMode>
__global__ void CpAsyncTile(const int* in, int* out) {
  SPQR_SHARED_ARRAY(int4, tile4, 64);
  int* tile = reinterpret_cast<int*>(tile4);
  const int t = threadIdx.x;
  CpAsync<16>(tile + 4 * t, in + 4 * t);
  CpAsyncCommit();
  CpAsync<16>(tile + 128 + 4 * t, in + 128 + 4 * t);
  CpAsyncCommit();
  if (kMode == 1) CpAsyncWait<1>();
  if (kMode == 2) CpAsyncWait<0>();
  __syncthreads();
  for (int i = 0; i < 8; ++i) out[8 * t + i] = tile[8 * t + i];
}

// Two rounds of __syncthreads_count/_and/_or with different predicates.
__global__ void BarrierVotes(int* out) {
  const int t = threadIdx.x;
  const int count = __syncthreads_count(t % 3 == 0);
  const int all = __syncthreads_and(t < 100);
  const int any = __syncthreads_or(t == 37);
  const int none = __syncthreads_or(0);
  out[t] = count * 1000 + all * 100 + any * 10 + none;
}

__global__ void WriteOnePerThread(int* out) { out[threadIdx.x] = 1; }

__global__ void SharedOverflow(int* out) {
  SPQR_SHARED_ARRAY(int, s, 4);
  s[threadIdx.x] = 1;  // 8 threads, 4 slots
  out[0] = s[0];
}

// ---- Helpers ----

template <typename T>
DeviceBuffer Upload(const std::vector<T>& host) {
  absl::StatusOr<DeviceBuffer> b = DeviceBuffer::FromVector(host);
  EXPECT_TRUE(b.ok()) << b.status();
  return b.ok() ? std::move(*b) : DeviceBuffer();
}

template <typename T>
DeviceBuffer Zeros(size_t n) {
  return Upload(std::vector<T>(n));
}

template <typename T>
std::vector<T> Download(const DeviceBuffer& b) {
  absl::StatusOr<std::vector<T>> v = b.ToVector<T>();
  EXPECT_TRUE(v.ok()) << v.status();
  return v.ok() ? *v : std::vector<T>();
}

// ---- Barriers and ordering ----

TEST(HarnessTest, MissingBarrierMismatchesInEveryOrder) {
  std::vector<int> in(128);
  std::iota(in.begin(), in.end(), 1000);
  std::vector<int> want(128);
  for (int b = 0; b < 2; ++b) {
    for (int i = 0; i < 64; ++i) want[b * 64 + i] = in[b * 64 + (i + 1) % 64];
  }
  DeviceBuffer d_in = Upload(in);
  for (const emu::Schedule& order : kOrders) {
    SCOPED_TRACE(emu::ScheduleName(order));
    emu::ScopedSchedule scoped(order);
    DeviceBuffer good = Zeros<int>(128);
    DeviceBuffer bad = Zeros<int>(128);
    SPQR_LAUNCH(RotateThroughShared<true>, 2, 64, 0, nullptr, d_in.as<int>(), good.as<int>());
    SPQR_LAUNCH(RotateThroughShared<false>, 2, 64, 0, nullptr, d_in.as<int>(), bad.as<int>());
    ASSERT_EQ(cudaGetLastError(), cudaSuccess);
    EXPECT_EQ(Download<int>(good), want);
    EXPECT_NE(Download<int>(bad), want);
  }
}

// Which order exposes a missing barrier depends on the kernel: here the warps advance through the
// shuffles in step, so only the order in which thread 0 reads early (forward) shows it. That is
// why every harness test of a kernel runs in two orders.
TEST(HarnessTest, MissingBarrierAfterWarpReductionMismatchesInSomeOrder) {
  std::mt19937 rng(7);
  std::uniform_real_distribution<float> u(-1.0f, 1.0f);
  std::vector<float> in(3 * 128);
  for (float& v : in) v = u(rng);
  DeviceBuffer d_in = Upload(in);
  int mismatching_orders = 0;
  for (const emu::Schedule& order : kOrders) {
    SCOPED_TRACE(emu::ScheduleName(order));
    emu::ScopedSchedule scoped(order);
    DeviceBuffer good = Zeros<float>(3);
    DeviceBuffer bad = Zeros<float>(3);
    SPQR_LAUNCH(BlockSum<true>, 3, 128, 0, nullptr, d_in.as<float>(), good.as<float>());
    SPQR_LAUNCH(BlockSum<false>, 3, 128, 0, nullptr, d_in.as<float>(), bad.as<float>());
    const std::vector<float> g = Download<float>(good);
    const std::vector<float> b = Download<float>(bad);
    bool mismatch = false;
    for (int blk = 0; blk < 3; ++blk) {
      double want = 0.0;
      for (int i = 0; i < 128; ++i) want += in[blk * 128 + i];
      EXPECT_NEAR(g[blk], want, 1e-4);
      // A partial read before it is written is the poison (NaN), so the sum cannot be right.
      mismatch |= !(std::abs(b[blk] - want) < 1e-4);
    }
    if (order.order == emu::ThreadOrder::kForward) {
      EXPECT_TRUE(mismatch);
    }
    mismatching_orders += mismatch;
  }
  EXPECT_GE(mismatching_orders, 1);
}

TEST(HarnessTest, ThreadOrderIsForwardReverseOrShuffled) {
  std::vector<int> forward(64), reverse(64);
  std::iota(forward.begin(), forward.end(), 0);
  for (int i = 0; i < 64; ++i) reverse[i] = 63 - i;
  for (const emu::Schedule& order : kOrders) {
    SCOPED_TRACE(emu::ScheduleName(order));
    emu::ScopedSchedule scoped(order);
    DeviceBuffer counter = Zeros<int>(1);
    DeviceBuffer out = Zeros<int>(64);
    SPQR_LAUNCH(RecordOrder, 1, 64, 0, nullptr, counter.as<int>(), out.as<int>());
    std::vector<int> got = Download<int>(out);
    if (order.order == emu::ThreadOrder::kForward) {
      EXPECT_EQ(got, forward);
    }
    if (order.order == emu::ThreadOrder::kReverse) {
      EXPECT_EQ(got, reverse);
    }
    if (order.order == emu::ThreadOrder::kShuffle) {
      EXPECT_NE(got, forward);
      EXPECT_NE(got, reverse);
      std::sort(got.begin(), got.end());
      EXPECT_EQ(got, forward);  // still a permutation: each thread ran exactly once
    }
  }
}

// The initial schedule is SPQR_CUDA_EMU_ORDER's (the ctest cuda_emu_env_order sets it to
// "shuffle:42"; unset means forward).
TEST(HarnessTest, InitialScheduleComesFromTheEnvironment) {
  const char* env = std::getenv("SPQR_CUDA_EMU_ORDER");
  const std::string want = env == nullptr ? "forward" : env;
  EXPECT_EQ(emu::ScheduleName(emu::GetSchedule()), want);
}

TEST(HarnessTest, CoordinatesCoverA3dGridAndBlock) {
  const dim3 grid(3, 2, 2);
  const dim3 block(4, 3, 2);
  const int threads = 24;
  DeviceBuffer out = Zeros<uint4>(12 * threads);
  SPQR_LAUNCH(Coordinates, grid, block, 0, nullptr, out.as<uint4>());
  ASSERT_EQ(cudaGetLastError(), cudaSuccess);
  const std::vector<uint4> got = Download<uint4>(out);
  for (unsigned bz = 0; bz < 2; ++bz) {
    for (unsigned by = 0; by < 2; ++by) {
      for (unsigned bx = 0; bx < 3; ++bx) {
        for (unsigned t = 0; t < 24; ++t) {
          const uint4 v = got[(bx + 3 * (by + 2 * bz)) * threads + t];
          EXPECT_EQ(v.x, t % 4);
          EXPECT_EQ(v.y, (t / 4) % 3);
          EXPECT_EQ(v.z, t / 12);
          EXPECT_EQ(v.w, bx + 100 * by + 10000 * bz);
        }
      }
    }
  }
}

TEST(HarnessTest, BarrierVotesCountTheBlock) {
  for (const emu::Schedule& order : kOrders) {
    SCOPED_TRACE(emu::ScheduleName(order));
    emu::ScopedSchedule scoped(order);
    DeviceBuffer out = Zeros<int>(96);
    SPQR_LAUNCH(BarrierVotes, 1, 96, 0, nullptr, out.as<int>());
    // 32 of 96 threads have t % 3 == 0; all are < 100; thread 37 votes yes; nobody in the last.
    EXPECT_EQ(Download<int>(out), std::vector<int>(96, 32 * 1000 + 100 + 10 + 0));
  }
}

// ---- Aborts ----

using HarnessDeathTest = ::testing::Test;

TEST(HarnessDeathTest, DivergentBarrierAborts) {
  DeviceBuffer out = Zeros<int>(32);
  EXPECT_DEATH(SPQR_LAUNCH(ExitBeforeBarrier, 1, 32, 0, nullptr, out.as<int>()),
               "divergent __syncthreads: 16 thread\\(s\\) exited while 16 wait");
}

TEST(HarnessDeathTest, BarriersAtDifferentSitesAbort) {
  DeviceBuffer out = Zeros<int>(32);
  EXPECT_DEATH(SPQR_LAUNCH(BarriersAtTwoSites, 1, 32, 0, nullptr, out.as<int>()),
               "threads wait at different barriers");
}

TEST(HarnessDeathTest, ShuffleWithAnExitedLaneDeadlocks) {
  DeviceBuffer out = Zeros<int>(32);
  EXPECT_DEATH(SPQR_LAUNCH(ShuffleWithExitedLane, 1, 32, 0, nullptr, out.as<int>()),
               "deadlock(.|\n)*31 thread\\(s\\) wait in __shfl_sync");
}

TEST(HarnessDeathTest, ShuffleMaskWithoutTheCallingLaneAborts) {
  DeviceBuffer out = Zeros<int>(32);
  EXPECT_DEATH(SPQR_LAUNCH(ShuffleWithoutOwnLane, 1, 32, 0, nullptr, out.as<int>()),
               "the calling lane 16 is not in mask 0x0000ffff");
}

TEST(HarnessDeathTest, FullMaskInAPartialWarpAborts) {
  DeviceBuffer out = Zeros<int>(48);
  EXPECT_DEATH(SPQR_LAUNCH(ShuffleWithExitedLane, 1, 48, 0, nullptr, out.as<int>()),
               "names lanes that do not exist");
}

TEST(HarnessDeathTest, DifferentIntrinsicsInOneMaskAbort) {
  DeviceBuffer out = Zeros<int>(32);
  EXPECT_DEATH(SPQR_LAUNCH(MixedIntrinsics, 1, 32, 0, nullptr, out.as<int>()),
               "call different warp intrinsics");
}

TEST(HarnessDeathTest, DeviceBuiltinsOutsideAKernelAbort) {
  EXPECT_DEATH((void)threadIdx.x, "threadIdx called outside a kernel");
}

#if defined(__SANITIZE_ADDRESS__)
// Under ASan (the cuda_emu_asan ctest) every device allocation and every shared variable is its
// own heap block, so out-of-bounds accesses in a kernel are reported where they happen.
TEST(HarnessDeathTest, AsanCatchesAnOutOfBoundsGlobalWrite) {
  DeviceBuffer out = Zeros<int>(31);
  EXPECT_DEATH(SPQR_LAUNCH(WriteOnePerThread, 1, 32, 0, nullptr, out.as<int>()),
               "heap-buffer-overflow");
}

TEST(HarnessDeathTest, AsanCatchesASharedMemoryOverflow) {
  DeviceBuffer out = Zeros<int>(1);
  EXPECT_DEATH(SPQR_LAUNCH(SharedOverflow, 1, 8, 0, nullptr, out.as<int>()),
               "heap-buffer-overflow");
}
#endif

// ---- Warp intrinsics against the Programming Guide ----

// The Guide's definitions, written per lane.
int ShflRef(const std::vector<int>& v, int tid, int src_lane, int width) {
  const int warp = tid / 32 * 32;
  const int lane = tid % 32;
  return v[warp + lane / width * width + (src_lane % width + width) % width];
}
int ShflUpRef(const std::vector<int>& v, int tid, int delta, int width) {
  const int lane = tid % 32;
  return lane % width - delta >= 0 ? v[tid - delta] : v[tid];
}
int ShflDownRef(const std::vector<int>& v, int tid, int delta, int width) {
  const int lane = tid % 32;
  return lane % width + delta < width ? v[tid + delta] : v[tid];
}
int ShflXorRef(const std::vector<int>& v, int tid, int lane_mask, int width) {
  const int lane = tid % 32;
  const int src = lane ^ lane_mask;
  // Lanes may read earlier segments but not later ones (then their own value).
  return src / width > lane / width ? v[tid] : v[tid / 32 * 32 + src];
}

TEST(HarnessTest, ShufflesMatchTheProgrammingGuide) {
  std::vector<int> value(64);
  for (int t = 0; t < 64; ++t) value[t] = (t % 32) * 10 + t / 32;
  for (const emu::Schedule& order : kOrders) {
    SCOPED_TRACE(emu::ScheduleName(order));
    emu::ScopedSchedule scoped(order);
    std::mt19937 rng(static_cast<uint32_t>(order.seed + static_cast<int>(order.order)));
    std::vector<int> src_lane(64);
    for (int& s : src_lane) s = std::uniform_int_distribution<int>(0, 40)(rng);
    const std::vector<int> delta = {3, 1};  // xor masks 3 and 1 too
    DeviceBuffer d_src = Upload(src_lane);
    DeviceBuffer d_delta = Upload(delta);
    DeviceBuffer out = Zeros<int>(4 * 64 * 4);
    SPQR_LAUNCH(AllShuffles, 1, 64, 0, nullptr, d_src.as<int>(), d_delta.as<int>(), out.as<int>());
    const std::vector<int> got = Download<int>(out);
    int k = 0;
    for (int width = 32; width >= 4; width /= 2, ++k) {
      for (int t = 0; t < 64; ++t) {
        const int* o = got.data() + (k * 64 + t) * 4;
        const int d = delta[t / 32];
        SCOPED_TRACE(::testing::Message() << "width " << width << " thread " << t);
        EXPECT_EQ(o[0], ShflRef(value, t, src_lane[t], width));
        EXPECT_EQ(o[1], ShflUpRef(value, t, d, width));
        EXPECT_EQ(o[2], ShflDownRef(value, t, d, width));
        EXPECT_EQ(o[3], ShflXorRef(value, t, d, width));
      }
    }
  }
}

TEST(HarnessTest, BallotAllAnyCoverExactlyTheMask) {
  std::vector<int> predicate(64);
  for (int t = 0; t < 64; ++t) predicate[t] = (t * 7) % 3 == 0;
  predicate[40] = 7;                               // any non-zero value counts as true
  for (int t = 48; t < 64; ++t) predicate[t] = 1;  // warp 1, lanes 16-31: outside the mask
  DeviceBuffer d_pred = Upload(predicate);
  DeviceBuffer ballot = Zeros<unsigned>(64);
  DeviceBuffer all = Zeros<int>(64);
  DeviceBuffer any = Zeros<int>(64);
  SPQR_LAUNCH(PartialBallot, 1, 64, 0, nullptr, d_pred.as<int>(), ballot.as<unsigned>(),
              all.as<int>(), any.as<int>());
  const std::vector<unsigned> b = Download<unsigned>(ballot);
  const std::vector<int> a = Download<int>(all);
  const std::vector<int> y = Download<int>(any);
  for (int w = 0; w < 2; ++w) {
    unsigned want = 0;
    for (int l = 0; l < 16; ++l) want |= (predicate[w * 32 + l] != 0 ? 1u : 0u) << l;
    for (int l = 0; l < 16; ++l) {
      EXPECT_EQ(b[w * 32 + l], want) << "warp " << w << " lane " << l;
      EXPECT_EQ(a[w * 32 + l], want == 0xffffu ? 1 : 0);
      EXPECT_EQ(y[w * 32 + l], want != 0 ? 1 : 0);
    }
  }
}

TEST(HarnessTest, ShufflesCarry64BitAndHalf2Values) {
  DeviceBuffer out64 = Zeros<int64_t>(32);
  DeviceBuffer outh = Zeros<__half2>(32);
  SPQR_LAUNCH(WideShuffle, 1, 32, 0, nullptr, out64.as<int64_t>(), outh.as<__half2>());
  const std::vector<int64_t> v = Download<int64_t>(out64);
  const std::vector<__half2> h = Download<__half2>(outh);
  for (int l = 0; l < 32; ++l) {
    const int src = l < 31 ? l + 1 : l;
    EXPECT_EQ(v[l], (int64_t{src} << 40) | 7);
    EXPECT_EQ(__low2float(h[l]), static_cast<float>(l ^ 1));
    EXPECT_EQ(__high2float(h[l]), -static_cast<float>(l ^ 1));
  }
}

// The toolkit's half types on the host, plus the fused multiply-adds the harness adds (they are
// device-only in cuda_fp16.h).
TEST(HarnessTest, HalfArithmeticWorksOnTheHost) {
  const __half a = __float2half(1.5f), b = __float2half(2.25f), c = __float2half(-0.5f);
  EXPECT_EQ(__half2float(__hadd(a, b)), 3.75f);
  EXPECT_EQ(__half2float(__hmul(a, b)), 3.375f);
  EXPECT_EQ(__half2float(__hfma(a, b, c)), 2.875f);
  // Fused, i.e. one rounding: x = 1 + 2^-10, x * x - (1 + 2^-9) = 2^-20 exactly (an fp16
  // subnormal), where rounding the product first would give 0.
  const __half x1 = __float2half(1.0f + 1.0f / 1024);
  EXPECT_EQ(__half2float(__hfma(x1, x1, __float2half(-(1.0f + 1.0f / 512)))), 1.0f / (1 << 20));
  const __half2 x = __floats2half2_rn(1.0f, 2.0f), y = __floats2half2_rn(3.0f, 4.0f);
  const __half2 z = __hfma2(x, y, x);
  EXPECT_EQ(__low2float(z), 4.0f);
  EXPECT_EQ(__high2float(z), 10.0f);
  const __nv_bfloat16 p = __float2bfloat16(1.5f);
  EXPECT_EQ(__bfloat162float(__hfma(p, p, p)), 3.75f);
}

// ---- Shared memory ----

TEST(HarnessTest, SharedMemoryIsPerBlockAndPoisoned) {
  for (const emu::Schedule& order : kOrders) {
    SCOPED_TRACE(emu::ScheduleName(order));
    emu::ScopedSchedule scoped(order);
    DeviceBuffer first = Zeros<int>(5);
    DeviceBuffer after = Zeros<int>(5 * 64);
    DeviceBuffer dyn = Zeros<unsigned>(5);
    SPQR_LAUNCH(SharedPerBlock, 5, 64, 12, nullptr, first.as<int>(), after.as<int>(),
                dyn.as<unsigned>());
    ASSERT_EQ(cudaGetLastError(), cudaSuccess);
    EXPECT_EQ(Download<int>(first), std::vector<int>(5, -1));  // 0xffffffff, every block
    EXPECT_EQ(Download<unsigned>(dyn), std::vector<unsigned>(5, 0xffffffffu));
    const std::vector<int> a = Download<int>(after);
    for (int i = 0; i < 5 * 64; ++i) EXPECT_EQ(a[i], i / 64);
  }
}

TEST(HarnessTest, CpAsyncLandsOnlyWhenItsGroupIsWaitedFor) {
  std::vector<int> in(256);
  std::iota(in.begin(), in.end(), 0);
  DeviceBuffer d_in = Upload(in);
  std::vector<int> first_half = in;
  std::fill(first_half.begin() + 128, first_half.end(), -1);
  for (const emu::Schedule& order : kOrders) {
    SCOPED_TRACE(emu::ScheduleName(order));
    emu::ScopedSchedule scoped(order);
    DeviceBuffer none = Zeros<int>(256), first = Zeros<int>(256), both = Zeros<int>(256);
    SPQR_LAUNCH(CpAsyncTile<0>, 1, 32, 0, nullptr, d_in.as<int>(), none.as<int>());
    SPQR_LAUNCH(CpAsyncTile<1>, 1, 32, 0, nullptr, d_in.as<int>(), first.as<int>());
    SPQR_LAUNCH(CpAsyncTile<2>, 1, 32, 0, nullptr, d_in.as<int>(), both.as<int>());
    EXPECT_EQ(Download<int>(none), std::vector<int>(256, -1));  // still the poison
    EXPECT_EQ(Download<int>(first), first_half);
    EXPECT_EQ(Download<int>(both), in);
  }
}

// ---- Launch configuration and runtime ----

TEST(HarnessTest, InvalidLaunchesRunNothingAndReportLikeAGpu) {
  const emu::Stats before = emu::GetStats();
  ASSERT_EQ(cudaGetLastError(), cudaSuccess);
  SPQR_LAUNCH(Noop, 1, 1025, 0, nullptr, nullptr);
  EXPECT_EQ(cudaGetLastError(), cudaErrorInvalidConfiguration);
  EXPECT_EQ(cudaGetLastError(), cudaSuccess);  // not sticky
  SPQR_LAUNCH(Noop, 0, 32, 0, nullptr, nullptr);
  EXPECT_EQ(cudaGetLastError(), cudaErrorInvalidConfiguration);
  SPQR_LAUNCH(Noop, dim3(1, 65536), 32, 0, nullptr, nullptr);
  EXPECT_EQ(cudaGetLastError(), cudaErrorInvalidConfiguration);
  SPQR_LAUNCH(Noop, 1, 32, 64 * 1024, nullptr, nullptr);  // > 48 KiB without opting in
  EXPECT_EQ(cudaGetLastError(), cudaErrorInvalidValue);
  EXPECT_EQ(emu::GetStats().launches, before.launches);
  ASSERT_EQ(cudaFuncSetAttribute(reinterpret_cast<const void*>(&Noop),
                                 cudaFuncAttributeMaxDynamicSharedMemorySize, 64 * 1024),
            cudaSuccess);
  SPQR_LAUNCH(Noop, 2, 32, 64 * 1024, nullptr, nullptr);
  EXPECT_EQ(cudaGetLastError(), cudaSuccess);
  const emu::Stats after = emu::GetStats();
  EXPECT_EQ(after.launches, before.launches + 1);
  EXPECT_EQ(after.blocks, before.blocks + 2);
  EXPECT_EQ(after.threads, before.threads + 64);
}

TEST(HarnessTest, CopiesCheckTheirDirection) {
  std::vector<int> host(4, 1), other(4, 2);
  EXPECT_EQ(cudaMemcpy(other.data(), host.data(), 16, cudaMemcpyHostToDevice),
            cudaErrorInvalidValue);
  EXPECT_EQ(cudaGetLastError(), cudaErrorInvalidValue);
  DeviceBuffer d = Upload(host);
  EXPECT_EQ(cudaMemcpy(other.data(), d.data(), 16, cudaMemcpyHostToDevice), cudaErrorInvalidValue);
  EXPECT_EQ(cudaMemcpy(other.data(), d.data(), 16, cudaMemcpyDeviceToHost), cudaSuccess);
  EXPECT_EQ(other, host);
  // Past the end of the allocation is not device memory either.
  EXPECT_EQ(cudaMemcpy(other.data(), d.data(), 20, cudaMemcpyDeviceToHost), cudaErrorInvalidValue);
  EXPECT_EQ(cudaFree(other.data()), cudaErrorInvalidValue);
  (void)cudaGetLastError();
}

TEST(HarnessTest, DeviceMemoryRunsOutLikeAGpu) {
  size_t free_bytes = 0, total = 0;
  ASSERT_EQ(cudaMemGetInfo(&free_bytes, &total), cudaSuccess);
  absl::StatusOr<DeviceBuffer> too_big = DeviceBuffer::Allocate(total + 1);
  EXPECT_EQ(too_big.status().code(), absl::StatusCode::kResourceExhausted) << too_big.status();
  (void)cudaGetLastError();
  absl::StatusOr<DeviceBuffer> some = DeviceBuffer::Allocate(1 << 20);
  ASSERT_TRUE(some.ok());
  size_t free_after = 0;
  ASSERT_EQ(cudaMemGetInfo(&free_after, &total), cudaSuccess);
  EXPECT_EQ(free_after, free_bytes - (1 << 20));
}

TEST(HarnessTest, DeviceQueryShowsTheEmulatedDevice) {
  absl::StatusOr<std::vector<CudaDeviceInfo>> devices = QueryCudaDevices();
  ASSERT_TRUE(devices.ok()) << devices.status();
  ASSERT_EQ(devices->size(), 1u);
  EXPECT_THAT((*devices)[0].name, HasSubstr("emulated"));
  EXPECT_TRUE((*devices)[0].can_run_kernels);
  EXPECT_THAT(DescribeCudaDevices(*devices), HasSubstr("sm_90"));
}

// ---- PTX wrappers' host references against the PTX ISA ----

TEST(PtxReferenceTest, Lop3ComputesTheFunctionItsTableEncodes) {
  std::mt19937 rng(3);
  for (int i = 0; i < 100; ++i) {
    const uint32_t a = rng(), b = rng(), c = rng();
    EXPECT_EQ(Lop3<0xEA>(a, b, c), (a & b) | c);
    EXPECT_EQ(Lop3<0x96>(a, b, c), a ^ b ^ c);
    EXPECT_EQ(Lop3<0x80>(a, b, c), a & b & c);
    EXPECT_EQ(Lop3<0xF0>(a, b, c), a);
    EXPECT_EQ(Lop3<0xCA>(a, b, c), (a & b) | (~a & c));  // bit select
    EXPECT_EQ(Lop3<(0xF0 & 0xCC) ^ 0xAA>(a, b, c), (a & b) ^ c);
  }
}

TEST(PtxReferenceTest, PrmtSelectsAndSignReplicatesBytes) {
  const uint32_t a = 0x33221100u, b = 0x77665544u;
  EXPECT_EQ(Prmt(a, b, 0x3210), a);
  EXPECT_EQ(Prmt(a, b, 0x7654), b);
  EXPECT_EQ(Prmt(a, b, 0x0123), 0x00112233u);
  EXPECT_EQ(Prmt(a, b, 0x5140), 0x55114400u);
  // Sign replication (bit 3 of a selector nibble): byte 0x80 -> 0xff, byte 0x7f -> 0x00.
  EXPECT_EQ(Prmt(0x0000807fu, 0, 0x8989), 0x00ff00ffu);
  std::mt19937 rng(5);
  for (int i = 0; i < 100; ++i) {
    const uint32_t x = rng(), y = rng(), s = rng() & 0x7777u;
    EXPECT_EQ(Prmt(x, y, s), __byte_perm(x, y, s));
  }
}

}  // namespace
}  // namespace spqr
