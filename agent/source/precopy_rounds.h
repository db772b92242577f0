// Pre-copy on the source: which guest pages each round sends while the VM runs, and which
// copies are stale once it is paused. Built on the VMM's write tracking (sys/write_tracker.h,
// the live-source handover of vmm/source_handover.h).
//
// The invariant it keeps: a page written after the copy a round sent was read is named again,
// by a later round or by stalePagesAfterPause(). Every round scans (and so re-protects) its
// pages *before* they are read, so a write that lands while or after a page is read is left
// for the next scan. After the pause nothing writes, and the last scan names every page whose
// sent copy may be older than the memory: the destination must not install those from the
// old copy.
#pragma once

#include <chrono>
#include <cstdint>
#include <vector>

#include "agent/core/precopy_policy.h"
#include "base/error.h"
#include "sys/write_tracker.h"
#include "vmm/handshake.h"

namespace lazymig::agent {

// Guest pages [first, first + count), in the migration's page size.
struct GuestPageRun {
  std::uint64_t first = 0;
  std::uint64_t count = 0;
  bool operator==(const GuestPageRun&) const = default;
};

class PrecopyRounds {
 public:
  // `tracker` tracks the regions' host ranges in the order of `regions` (sorted by offset).
  PrecopyRounds(sys::WriteTracker tracker, std::vector<vmm::GuestRegionMapping> regions,
                std::uint64_t page_size, PrecopyPolicy policy);

  // The next round's pages to read and send. Round 1: every page (the caller skips or marks
  // zero pages); its scan only arms the tracking. Later rounds: the pages written since the
  // previous round's scan. On an error the tracking can no longer be trusted: treat every
  // page sent so far as stale.
  Result<std::vector<GuestPageRun>> beginRound();
  // The round's pages are sent; returns why to switch now, or nothing for another round.
  std::optional<SwitchReason> endRound();
  // Once the source VM is paused: the pages whose sent copy may be stale (written since the
  // last round's scan). Every other page's last sent copy equals the paused memory.
  Result<std::vector<GuestPageRun>> stalePagesAfterPause();

  const std::vector<PrecopyRound>& rounds() const { return rounds_; }
  std::uint64_t pageCount() const { return page_count_; }

 private:
  Result<std::vector<GuestPageRun>> scan();

  sys::WriteTracker tracker_;
  std::vector<vmm::GuestRegionMapping> regions_;
  std::uint64_t page_size_;
  std::uint64_t page_count_ = 0;
  PrecopyPolicy policy_;
  std::vector<PrecopyRound> rounds_;
  std::chrono::steady_clock::time_point started_;
  std::chrono::steady_clock::time_point round_started_;
};

}  // namespace lazymig::agent
