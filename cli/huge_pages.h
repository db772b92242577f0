// The 2 MiB huge pages a hugetlbfs demo's two VMs need, reserved for the run through
// /proc/sys/vm/nr_hugepages and given back afterwards.
#pragma once

#include <cstdint>
#include <optional>

#include "base/error.h"
#include "sys/unique_fd.h"

namespace lazymig::cli {

inline constexpr std::uint64_t kHugePage = 2ull << 20;
// Beyond the two VMs' own: a margin for the rounding of region splits and anything else here.
inline constexpr std::uint64_t kSpareHugePages = 4;
inline constexpr const char* kHugePageLockFile = "/tmp/lazymig-demo-huge-pages.lock";

// Makes sure `pages` 2 MiB huge pages are free, raising /proc/sys/vm/nr_hugepages by the
// shortfall if need be; puts the previous value back when destroyed.
//
// Holds an exclusive lock (kHugePageLockFile) from the check until the value is put back:
// demos run side by side (ctest -j) would otherwise count each other's raised but not yet
// mapped pages as free, and the first to finish would shrink the pool under the other's VMs.
class HugePageReservation {
 public:
  HugePageReservation() = default;
  static Result<HugePageReservation> ensureFree(std::uint64_t pages, bool verbose);
  HugePageReservation(HugePageReservation&& other) noexcept;
  HugePageReservation& operator=(HugePageReservation&& other) noexcept;
  HugePageReservation(const HugePageReservation&) = delete;
  HugePageReservation& operator=(const HugePageReservation&) = delete;
  ~HugePageReservation();

 private:
  std::optional<std::uint64_t> restore_to_;  // the nr_hugepages to put back, if raised
  bool verbose_ = false;
  sys::UniqueFd lock_;  // flock(LOCK_EX) on kHugePageLockFile; released after restoring
};

}  // namespace lazymig::cli
