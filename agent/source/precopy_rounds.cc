#include "agent/source/precopy_rounds.h"

namespace lazymig::agent {

using Clock = std::chrono::steady_clock;

PrecopyRounds::PrecopyRounds(sys::WriteTracker tracker,
                             std::vector<vmm::GuestRegionMapping> regions, std::uint64_t page_size,
                             PrecopyPolicy policy)
    : tracker_(std::move(tracker)),
      regions_(std::move(regions)),
      page_size_(page_size),
      policy_(policy) {
  for (const auto& r : regions_) page_count_ += r.size / page_size_;
}

Result<std::vector<GuestPageRun>> PrecopyRounds::scan() {
  std::vector<GuestPageRun> out;
  std::vector<sys::PageRun> runs;
  for (std::size_t i = 0; i < regions_.size(); ++i) {
    runs.clear();
    if (auto ok = tracker_.takeWritten(i, runs); !ok) return std::unexpected(ok.error());
    const std::uint64_t first_page = regions_[i].offset / page_size_;
    for (const auto& run : runs) {
      GuestPageRun page_run{first_page + run.first, run.count};
      // Regions are contiguous in guest memory: a run may continue across their border.
      if (!out.empty() && out.back().first + out.back().count == page_run.first) {
        out.back().count += page_run.count;
      } else {
        out.push_back(page_run);
      }
    }
  }
  return out;
}

Result<std::vector<GuestPageRun>> PrecopyRounds::beginRound() {
  round_started_ = Clock::now();
  if (rounds_.empty()) started_ = round_started_;
  auto written = scan();
  if (!written) return written;
  PrecopyRound round;
  round.number = static_cast<unsigned>(rounds_.size() + 1);
  if (round.number == 1) {
    // Whatever the scan found, everything goes: this scan protected every page, and a copy
    // read after it is current until the page's next write, which the next scan reports.
    round.pages = page_count_;
    rounds_.push_back(round);
    return std::vector<GuestPageRun>{{0, page_count_}};
  }
  for (const auto& run : *written) round.pages += run.count;
  rounds_.push_back(round);
  return written;
}

std::optional<SwitchReason> PrecopyRounds::endRound() {
  const auto now = Clock::now();
  if (!rounds_.empty()) rounds_.back().duration = now - round_started_;
  return decideSwitch(policy_, rounds_, now - started_);
}

Result<std::vector<GuestPageRun>> PrecopyRounds::stalePagesAfterPause() {
  // Before round 1 nothing was protected, so a scan would miss pages written before it.
  if (rounds_.empty()) return std::vector<GuestPageRun>{{0, page_count_}};
  return scan();
}

}  // namespace lazymig::agent
