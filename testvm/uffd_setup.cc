#include "testvm/uffd_setup.h"

#include <linux/userfaultfd.h>

#include <cstdio>
#include <cstring>

namespace lazymig::testvm {

std::uint64_t uffdFeatures(MemoryKind kind) {
  std::uint64_t f = UFFD_FEATURE_EVENT_REMOVE;
  switch (kind) {
    case MemoryKind::kAnonymous:
      break;
    case MemoryKind::kMemfd:
      f |= UFFD_FEATURE_MISSING_SHMEM;
      break;
    case MemoryKind::kMemfdMinor:
    case MemoryKind::kGuestMemfd:
      f |= UFFD_FEATURE_MISSING_SHMEM | UFFD_FEATURE_MINOR_SHMEM;
      break;
    case MemoryKind::kHugetlb:
    case MemoryKind::kHugetlbShared:
      f |= UFFD_FEATURE_MISSING_HUGETLBFS;
      break;
    case MemoryKind::kHugetlbMinor:
      f |= UFFD_FEATURE_MISSING_HUGETLBFS | UFFD_FEATURE_MINOR_HUGETLBFS;
      break;
  }
  return f;
}

sys::RegisterMode registerMode(MemoryKind kind) {
  return isMinorMode(kind) || kind == MemoryKind::kGuestMemfd ? sys::RegisterMode::kMissingAndMinor
                                                              : sys::RegisterMode::kMissing;
}

Result<bool> registerRegions(const sys::Uffd& uffd, const GuestMemory& mem) {
  const auto regions = mem.mappings();
  for (std::size_t i = 0; i < regions.size(); ++i) {
    const auto& r = regions[i];
    auto ok = uffd.registerRange(HostAddr{r.base_host_virt_addr}, Bytes{r.size},
                                 registerMode(mem.kind()));
    if (ok) continue;
    if (mem.kind() != MemoryKind::kGuestMemfd) return std::unexpected(ok.error());
    for (std::size_t k = 0; k < i; ++k) {
      (void)uffd.unregisterRange(HostAddr{regions[k].base_host_virt_addr}, Bytes{regions[k].size});
    }
    int err = ok.error().sys_errno;
    const char* name = err != 0 ? strerrorname_np(err) : nullptr;
    std::fprintf(stderr,
                 "lazymig-testvm: uffd registration on the guest_memfd mapping refused (%s: %s): "
                 "vCPU faults go by FaultRequest only\n",
                 name ? name : "?", err != 0 ? std::strerror(err) : ok.error().message().c_str());
    return false;
  }
  return true;
}

}  // namespace lazymig::testvm
