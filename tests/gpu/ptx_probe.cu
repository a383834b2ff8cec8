#include "tests/gpu/ptx_probe.cuh"
#include "tests/gpu/ptx_probe.h"

namespace spqr::testing {

void LaunchPtxProbe(const uint32_t* in, uint32_t* out, int n) { LaunchPtxProbeKernel(in, out, n); }

void LaunchCpAsyncProbe(const int* in, int* out) { LaunchCpAsyncProbeKernel(in, out); }

void LaunchMmaProbe(const uint16_t* a, const uint16_t* bt, const float* c, float* d) {
  LaunchMmaProbeKernel(reinterpret_cast<const __half*>(a), reinterpret_cast<const __half*>(bt), c,
                       d);
}

}  // namespace spqr::testing
