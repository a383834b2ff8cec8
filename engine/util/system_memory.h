// How much memory this process may use at most, for refusing sizes (the KV pool) that could only
// end in std::bad_alloc or the OOM killer.
#pragma once

#include <cstdint>
#include <string>

namespace spqr {

struct HostMemoryLimit {
  int64_t bytes = 0;   // 0 when unknown
  std::string source;  // what the number is, for error messages
};

// The smaller of the machine's physical memory (sysconf(_SC_PHYS_PAGES) x page size) and the
// memory limit of this process's cgroup (v2 memory.max or v1 memory.limit_in_bytes) when one is
// set, as containers do.
HostMemoryLimit GetHostMemoryLimit();

}  // namespace spqr
