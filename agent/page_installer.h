// How a page gets into the guest. Every install -- demand faults, the bulk stream, recovery
// -- goes through here, so that one rule guards invariant 2 (never install twice, never
// overwrite what the guest wrote): an install is atomic-if-absent (UFFDIO_COPY/ZEROPAGE fail
// with EEXIST on a present page), and pages the guest discarded (UFFD_EVENT_REMOVE) are never
// given their old contents.
//
// The kernel lets the VMM's madvise zap a range as soon as the REMOVE event is *read*, before
// the fault thread has marked the range removed. An install from another thread landing
// after the zap but before the marking would resurrect old contents. So the fault thread
// holds events_mu_ from read(2) until the removal is marked, and every install from another
// thread (the bulk stream) holds it while it checks states and copies -- a few pages at a
// time, to keep a fault from waiting long.
#pragma once

#include <cstdint>
#include <functional>
#include <mutex>
#include <string_view>

#include "agent/guest_layout.h"
#include "base/error.h"
#include "store/page_map.h"
#include "sys/uffd.h"

namespace lazymig::agent {

struct InstallCounts {
  std::uint64_t installed = 0;        // pages this call put into the guest
  std::uint64_t already_present = 0;  // pages the kernel reported present (EEXIST)
  std::uint64_t skipped = 0;          // pages already done by the page map's account
};

class PageInstaller {
 public:
  PageInstaller(const sys::Uffd& uffd, const GuestLayout& layout, store::PageMap& pages)
      : uffd_(uffd), layout_(layout), pages_(pages) {}

  std::string_view pathName() const { return "uffd_copy"; }

  // Installs the pages of [first, first+count) that are not done yet. `data` holds
  // count * page_size bytes, or is null for all-zero pages. When the VMM's address space is
  // changing (EAGAIN), `on_retry` runs without any lock held -- the fault thread drains the
  // uffd there -- and the install is tried again.
  // `fault_thread`: the caller is the thread that reads the uffd (and so already excludes
  // removals); any other caller takes the lock.
  Result<InstallCounts> install(PageIndex first, std::uint64_t count, const std::byte* data,
                                const std::function<void()>& on_retry, bool fault_thread);
  // A fault on a page the guest discarded: it gets zeros, never its old contents.
  Result<InstallCounts> installZeroForRemoved(PageIndex page,
                                              const std::function<void()>& on_retry);
  Status wake(PageIndex page) const;
  // UFFD_EVENT_REMOVE for [start, end) of the VMM's address space; returns pages newly done.
  // Fault thread only, holding eventsLock().
  std::uint64_t removeRange(HostAddr start, HostAddr end);
  // Held by the fault thread from reading the uffd until any removal it read is marked.
  std::unique_lock<std::mutex> eventsLock() { return std::unique_lock(events_mu_); }

 private:
  enum class Step { kDone, kRetry };
  Result<Step> installRun(PageIndex first, std::uint64_t count, const std::byte* data,
                          bool only_removed, InstallCounts& counts);

  const sys::Uffd& uffd_;
  const GuestLayout& layout_;
  store::PageMap& pages_;
  std::mutex events_mu_;
  static constexpr std::uint64_t kPagesPerLockedInstall = 16;
};

}  // namespace lazymig::agent
