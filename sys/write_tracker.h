// Which pages of a process's memory were written, learnt from outside the process without
// KVM's dirty log: a userfaultfd registered write-protect with UFFD_FEATURE_WP_ASYNC (a write to
// a protected page is resolved by the kernel, which only records it) plus PAGEMAP_SCAN on the
// process's /proc/PID/pagemap, which reports the pages written since they were last protected
// and protects them again, atomically per page (Linux 6.7; sys/write_tracking_abi.h).
//
// What it sees: every write through the tracked process's own page tables -- its threads, and
// KVM on its behalf (KVM writes guest memory through the VMM's mappings). What it cannot see:
// writes through another mapping of the same shared memory (a vhost-user backend in another
// process, write(2) on the memfd), which never touch these page tables.
#pragma once

#include <cstdint>
#include <vector>

#include "base/error.h"
#include "base/units.h"
#include "sys/uffd.h"
#include "sys/unique_fd.h"
#include "sys/write_tracking_abi.h"

namespace lazymig::sys {

// Pages [first, first + count) of a tracked range, counted from its start in its page size.
struct PageRun {
  std::uint64_t first = 0;
  std::uint64_t count = 0;
  bool operator==(const PageRun&) const = default;
};

// One range of the tracked process's address space.
struct TrackedRange {
  HostAddr start;
  Bytes len;
};

class WriteTracker {
 public:
  // The uffd features write tracking needs: WP_ASYNC, and WP_HUGETLBFS_SHMEM for shared memory.
  // WP_UNPOPULATED is left out on purpose: without it a never-populated page simply counts as
  // unwritten until its first write, which then shows (the new page table entry is not
  // protected); with it every scan would also walk and mark the holes.
  static std::uint64_t uffdFeatures();

  // Tracks this process's own memory: opens a uffd with uffdFeatures(), registers each range
  // write-protect, protects it, and opens /proc/self/pagemap. A VMM hands uffd() and pagemap()
  // to the agent; the first takeWritten() reports what was written after this call.
  static Result<WriteTracker> trackOwnMemory(std::vector<TrackedRange> ranges, Bytes page_size);

  // Tracks another process's memory (the source VMM's) through its uffd, already negotiated
  // with UFFD_FEATURE_WP_ASYNC and registered write-protect over every range, and its pagemap,
  // which it opened itself. Refuses a uffd without WP_ASYNC, an fd that is not a pagemap, and a
  // range the uffd does not cover, before protecting anything. Protects nothing either: a
  // restarted agent must not erase the marks of pages written since its predecessor's last
  // scan, so the first takeWritten() reports every page not protected at that moment (all of
  // them, for memory never scanned).
  static Result<WriteTracker> adopt(Uffd uffd, UniqueFd pagemap, std::vector<TrackedRange> ranges,
                                    Bytes page_size);

  // Appends to `out` the runs of range `range` written since they were last protected, and
  // protects them again in the same step: a write that lands after its page was reported is
  // reported by the next call. Runs are in address order, adjacent ones merged. On an error the
  // kernel may have protected pages it did not report: treat every page of the range as
  // written. One thread at a time.
  Status takeWritten(std::size_t range, std::vector<PageRun>& out);

  std::size_t rangeCount() const { return ranges_.size(); }
  const TrackedRange& rangeAt(std::size_t i) const { return ranges_[i]; }
  Bytes pageSize() const { return page_size_; }
  // The descriptors a VMM hands over; both stay owned here.
  const Uffd& uffd() const { return uffd_; }
  const UniqueFd& pagemap() const { return pagemap_; }
  // Most runs one PAGEMAP_SCAN call returns; more take several calls. For tests.
  void setScanCapacity(std::size_t runs);

 private:
  WriteTracker(Uffd uffd, UniqueFd pagemap, std::vector<TrackedRange> ranges, Bytes page_size);
  Status checkRegistered() const;

  Uffd uffd_;
  UniqueFd pagemap_;
  std::vector<TrackedRange> ranges_;
  Bytes page_size_;
  std::vector<abi::PageRegion> scan_buffer_;  // reused between scans
};

// Whether `fd` is a /proc/PID/pagemap (or /proc/self/pagemap) on procfs.
bool isProcPagemap(const UniqueFd& fd);

// Whether the uffd (whoever created it) was negotiated with every bit of `features`, from the
// API line the kernel prints in its fdinfo.
Result<bool> uffdHasFeatures(const Uffd& uffd, std::uint64_t features);

}  // namespace lazymig::sys
