#include "engine/util/system_memory.h"

#include <unistd.h>

#include <fstream>
#include <string>

#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"

namespace spqr {
namespace {

// A limit in bytes from a cgroup file; 0 when absent or unlimited ("max", or v1's huge value).
int64_t CgroupLimit(const char* path) {
  std::ifstream in(path);
  std::string text;
  if (!(in >> text)) return 0;
  int64_t bytes = 0;
  if (!absl::SimpleAtoi(text, &bytes) || bytes <= 0 || bytes >= (int64_t{1} << 62)) return 0;
  return bytes;
}

}  // namespace

HostMemoryLimit GetHostMemoryLimit() {
  HostMemoryLimit limit;
  const long pages = sysconf(_SC_PHYS_PAGES);
  const long page_size = sysconf(_SC_PAGESIZE);
  if (pages > 0 && page_size > 0) {
    limit.bytes = static_cast<int64_t>(pages) * page_size;
    limit.source = "physical memory (sysconf)";
  }
  for (const char* path :
       {"/sys/fs/cgroup/memory.max", "/sys/fs/cgroup/memory/memory.limit_in_bytes"}) {
    const int64_t cgroup = CgroupLimit(path);
    if (cgroup > 0 && (limit.bytes == 0 || cgroup < limit.bytes)) {
      limit.bytes = cgroup;
      limit.source = absl::StrCat("the cgroup memory limit (", path, ")");
    }
  }
  return limit;
}

}  // namespace spqr
