// The source side of the VMM interface: what a source VMM hands the agent on the handover
// socket, in the handshake's message format (JSON mappings + fds, SCM_RIGHTS).
//
//   1 fd   [memory]                   the paused guest's memory (a memfd, hugetlbfs file or
//                                     guest_memfd): pure post-copy, as before
//   3 fds  [memory, uffd, pagemap]    a *live* source, the pre-copy extension: the VM keeps
//                                     running, and the VMM adds a userfaultfd it created with
//                                     UFFD_FEATURE_WP_ASYNC and registered
//                                     UFFDIO_REGISTER_MODE_WP over every region's host range,
//                                     and its own /proc/self/pagemap, opened read-only
//
// The agent learns which pages the running guest writes by PAGEMAP_SCAN on that pagemap
// (sys/write_tracker.h). The VMM hands the pagemap fd rather than its pid: the fd is bound to
// the very address space the uffd serves (a pid can be reused by another process once the VMM
// exits), and opening one's own pagemap needs no privilege, while opening the VMM's would need
// ptrace access over it (CAP_SYS_PTRACE across users).
#pragma once

#include <cstdint>
#include <vector>

#include "base/error.h"
#include "sys/unique_fd.h"
#include "vmm/handshake.h"

namespace lazymig::vmm {

struct SourceHandover {
  std::vector<GuestRegionMapping> regions;  // sorted by offset; base_host_virt_addr in the VMM
  std::uint64_t page_size = 4096;
  std::uint64_t total_bytes = 0;
  sys::UniqueFd memory;
  // A live source only: the VMM's write-protect uffd and its pagemap.
  sys::UniqueFd write_tracking_uffd;
  sys::UniqueFd pagemap;
  bool live() const { return write_tracking_uffd.valid(); }
};

// Checks each fd against its place in a source handover (see above) before anything uses it.
// Errors name the fd's place and what it really is.
Status checkSourceFds(const Handshake& handshake);

// The received message as a source handover: checks the fds and moves them into their places.
Result<SourceHandover> sourceHandover(Handshake handshake);

}  // namespace lazymig::vmm
