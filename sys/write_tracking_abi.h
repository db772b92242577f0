// The kernel interfaces for tracking which pages a process writes, from outside it: an
// asynchronous write-protect userfaultfd plus the PAGEMAP_SCAN ioctl on /proc/PID/pagemap.
// Debian 12's headers (Linux 6.1) predate them, so they are defined here, under our own names
// (a newer <linux/fs.h> defines the same structs, and two definitions would not compile),
// with the layout checked against the kernel's. sys/write_tracker.h is their one user.
#pragma once

#include <linux/userfaultfd.h>
#include <sys/ioctl.h>

#include <cstdint>

namespace lazymig::sys::abi {

// --- userfaultfd features ---
// Linux 5.19: uffd-wp on shmem and hugetlbfs (in Debian 12's headers; repeated for clarity).
inline constexpr std::uint64_t kUffdFeatureWpHugetlbfsShmem = 1ull << 12;
// Linux 6.4: UFFDIO_WRITEPROTECT also marks pages that are not populated yet, so a first write
// to a never-touched page counts as a write to a protected page.
inline constexpr std::uint64_t kUffdFeatureWpUnpopulated = 1ull << 13;
// Linux 6.7: a write to a write-protected page is resolved by the kernel itself (the page just
// becomes "written", no message is queued, no handler runs).
inline constexpr std::uint64_t kUffdFeatureWpAsync = 1ull << 15;

static_assert(kUffdFeatureWpHugetlbfsShmem == UFFD_FEATURE_WP_HUGETLBFS_SHMEM);

// --- PAGEMAP_SCAN (Linux 6.7, fs/proc/task_mmu.c) ---
// Page categories, reported in PageRegion::categories and matched by the masks.
inline constexpr std::uint64_t kPageIsWpAllowed = 1ull << 0;
inline constexpr std::uint64_t kPageIsWritten = 1ull << 1;  // not write-protected since a scan
inline constexpr std::uint64_t kPageIsFile = 1ull << 2;
inline constexpr std::uint64_t kPageIsPresent = 1ull << 3;

// Flags: write-protect the pages that matched (atomically with reporting them), and refuse
// (EPERM) a range where any VMA is not registered for asynchronous write-protect.
inline constexpr std::uint64_t kPmScanWpMatching = 1ull << 0;
inline constexpr std::uint64_t kPmScanCheckWpAsync = 1ull << 1;

// struct page_region: one run of pages with the same categories, [start, end).
struct PageRegion {
  std::uint64_t start;
  std::uint64_t end;
  std::uint64_t categories;
};
static_assert(sizeof(PageRegion) == 24);

// struct pm_scan_arg. The kernel writes walk_end: where the walk stopped, which is `end` unless
// `vec` filled up (or max_pages was reached) first; the pages past it were neither reported nor
// write-protected.
struct PmScanArg {
  std::uint64_t size;  // sizeof(PmScanArg): the kernel's version check
  std::uint64_t flags;
  std::uint64_t start;
  std::uint64_t end;
  std::uint64_t walk_end;
  std::uint64_t vec;  // PageRegion*
  std::uint64_t vec_len;
  std::uint64_t max_pages;  // 0: no limit
  std::uint64_t category_inverted;
  std::uint64_t category_mask;
  std::uint64_t category_anyof_mask;
  std::uint64_t return_mask;
};
static_assert(sizeof(PmScanArg) == 96);

// _IOWR('f', 16, struct pm_scan_arg)
inline constexpr unsigned long kPagemapScan = _IOWR('f', 16, PmScanArg);

}  // namespace lazymig::sys::abi
