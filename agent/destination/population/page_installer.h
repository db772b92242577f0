// How a page gets into the guest. Every install -- demand faults, the bulk stream, recovery
// -- goes through here, so that one rule guards invariant 2 (never install twice, never
// overwrite what the guest may already see). The rule depends on the population path, chosen
// from what the VMM handed over at handshake:
//
//   uffd_copy             anonymous memory, shared memory in missing mode, hugetlbfs:
//                         UFFDIO_COPY / UFFDIO_ZEROPAGE, which the kernel makes
//                         atomic-if-absent (EEXIST on a present page).
//   shmem_minor_continue  shared memory registered MISSING | MINOR: write the page into the
//                         page cache (pwrite, or the agent's own mapping; the guest cannot see it
//                         yet), then UFFDIO_CONTINUE maps it. The guest's page-table entry is
//                         the visibility: a page is written only while the page map says
//                         missing, under write_mu_, and marked installed once continued.
//   guest_memfd_write     guest_memfd: write the page (pwrite where the file takes it, else
//   guest_memfd_mmap      through the agent's own mapping), then clear its userfault-bitmap
//                         bit. The clear bit is the visibility (a vCPU reads the page from
//                         then on): a page whose bit is clear is never written again.
//                         UFFDIO_CONTINUE maps it for faults that came through the uffd
//                         (makeVisible), where the kernel allows registering one.
//
// The kernel lets the VMM's madvise zap a range as soon as a REMOVE event is *read*, before
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
#include <vector>

#include "agent/destination/population/guest_layout.h"
#include "agent/destination/population/guest_memory_view.h"
#include "base/error.h"
#include "store/page_map.h"
#include "sys/uffd.h"

namespace lazymig::agent {

enum class PopulationPath { kUffdCopy, kShmemMinorContinue, kGuestMemfd };
std::string_view populationPathName(PopulationPath path);

struct InstallCounts {
  std::uint64_t installed = 0;        // pages this call put into the guest
  std::uint64_t already_present = 0;  // pages the kernel (or the bitmap) reported present
  std::uint64_t skipped = 0;          // pages already done by the page map's account
};

class PageInstaller {
 public:
  // `view` is required by the write paths (minor mode, guest_memfd) and unused by uffd_copy.
  PageInstaller(const sys::Uffd& uffd, const GuestLayout& layout, store::PageMap& pages,
                PopulationPath path = PopulationPath::kUffdCopy,
                const GuestMemoryView* view = nullptr);

  PopulationPath path() const { return path_; }
  // The path as the status names it; guest_memfd says how it is written (write or mmap).
  std::string_view pathName() const;
  // False once a UFFDIO_CONTINUE found no registered range (a guest_memfd the VMM could not
  // register): vCPU faults then arrive only as FaultRequests.
  bool uffdCoversGuest() const { return uffd_covers_guest_.load(std::memory_order_relaxed); }

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
  // Lets a vCPU blocked in a uffd fault on an installed page go on: a wake for uffd_copy (the
  // install mapped it); UFFDIO_CONTINUE for the write paths, whose install may not have.
  Status makeVisible(PageIndex page);
  // UFFD_EVENT_REMOVE for [start, end) of the VMM's address space; returns pages newly done.
  // Fault thread only, holding eventsLock().
  std::uint64_t removeRange(HostAddr start, HostAddr end);
  // Held by the fault thread from reading the uffd until any removal it read is marked.
  std::unique_lock<std::mutex> eventsLock() { return std::unique_lock(events_mu_); }

 private:
  enum class Step { kDone, kRetry };
  Result<Step> installRun(PageIndex first, std::uint64_t count, const std::byte* data,
                          bool only_removed, InstallCounts& counts);
  // One contiguous host run; page p's bytes are at data + (p - data_first) * page_size, or
  // zeros when data is null.
  Result<Step> copyRun(PageIndex first, std::uint64_t count, const std::byte* data,
                       PageIndex data_first, InstallCounts& counts);
  Result<Step> writeRun(PageIndex first, std::uint64_t count, const std::byte* data,
                        PageIndex data_first, bool only_removed, InstallCounts& counts);
  Result<Step> continueRun(PageIndex first, std::uint64_t count, InstallCounts& counts);
  // Issues an install ioctl over a contiguous run until every page is in or known present,
  // accounting each outcome; issue(page, its host address, bytes to the run's end).
  using IssueInstall =
      std::function<Result<sys::InstallResult>(PageIndex page, HostAddr dst, Bytes len)>;
  Result<Step> ioctlRun(PageIndex first, std::uint64_t count, const char* op,
                        const char* registered_how, const IssueInstall& issue,
                        InstallCounts& counts);
  Result<sys::InstallResult> continueRange(HostAddr dst, Bytes len);

  const sys::Uffd& uffd_;
  const GuestLayout& layout_;
  store::PageMap& pages_;
  const PopulationPath path_;
  const GuestMemoryView* view_;
  std::mutex events_mu_;
  // Write paths: held from checking a page's state to marking it installed, so that two
  // installers never both write a page and a late one never writes after the guest saw it.
  std::mutex write_mu_;
  std::atomic<bool> uffd_covers_guest_{true};
  // hugetlbfs has no UFFDIO_ZEROPAGE: zero huge pages are copied from here.
  std::vector<std::byte> zero_page_;
  static constexpr std::uint64_t kPagesPerLockedInstall = 16;
};

}  // namespace lazymig::agent
