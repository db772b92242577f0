// SourceMigration's pre-copy (docs/precopy.md): what a handover starts, the switch when the
// orchestrator paused the source VM, and the demand requests held until it.
#include "agent/core/loop_sync.h"
#include "agent/source/source_migration.h"
#include "loop/assert_on_loop.h"

namespace lazymig::agent {

namespace {
// Pages requested before a pre-copy's switch, held: a destination whose VM cannot run yet has
// no reason to ask for many.
constexpr std::size_t kHeldRequestLimit = 1u << 16;
}  // namespace

void SourceMigration::preparePrecopy(sys::UniqueFd wp_uffd, sys::UniqueFd pagemap,
                                     const std::vector<vmm::GuestRegionMapping>& regions,
                                     std::uint64_t page_size, std::uint64_t page_count) {
  const bool live = wp_uffd.valid();
  auto note = [this](std::string why) {
    std::lock_guard lock(runtime_mu_);
    precopy_note_ = std::move(why);
  };
  if (spec_.precopy.mode == PrecopyPolicy::Mode::kOff) {
    // Pure post-copy, as before: the orchestrator pauses the source before the destination
    // resumes, and the destination connects only then.
    // (A paused memory with pre-copy off is today's migration: its status says nothing new.)
    if (live) note("precopy is off for this migration: pure post-copy");
    return;
  }
  if (!live) {
    // Paused memory (a snapshot file, or one fd): nothing to copy early, but a destination
    // staging what arrives must hear the (empty) stale set before it installs anything.
    precopy_ = PrecopySource::switchedFromTheStart(peer_loop_, page_count);
    return;
  }
  // The tracking, adopted: it protects nothing, so the first scan (round 1) arms it.
  std::vector<sys::TrackedRange> ranges;
  for (const auto& r : regions) ranges.push_back({HostAddr{r.base_host_virt_addr}, Bytes{r.size}});
  auto uffd = sys::Uffd::adopt(std::move(wp_uffd));
  Result<sys::WriteTracker> tracker =
      uffd ? sys::WriteTracker::adopt(std::move(*uffd), std::move(pagemap), std::move(ranges),
                                      Bytes{page_size})
           : std::unexpected(uffd.error());
  if (!tracker) {
    // Still the switch protocol (the destination stages until StalePages), without rounds.
    log_.warn("write tracking refused; no pre-copy round will run",
              {{"error", tracker.error().message()}});
    precopy_ = std::make_unique<PrecopySource>(peer_loop_, std::nullopt, page_count,
                                               tracker.error().message());
  } else {
    precopy_ = std::make_unique<PrecopySource>(
        peer_loop_, PrecopyRounds(std::move(*tracker), regions, page_size, spec_.precopy),
        page_count);
  }
  live_ = true;
  hold_urgent_.store(true);
}

Status SourceMigration::paused() {
  Status out;
  runOnLoop(peer_loop_, [&] { out = switchToPostCopy(); });
  return out;
}

Status SourceMigration::switchToPostCopy() {
  LAZYMIG_ASSERT_ON_LOOP(peer_loop_);
  auto conflict = [this](const std::string& why) {
    return fail(Errc::kState, "paused", "migration '" + id() + "' " + why);
  };
  if (isFinal(state())) return conflict("is " + std::string(stateName(state())));
  if (!ready_.load(std::memory_order_acquire)) {
    return conflict("is not a live pre-copy yet: its memory has not been handed over");
  }
  if (!precopy_) {
    const std::string note = precopyNote();
    return conflict("is not a live pre-copy: " +
                    (note.empty() ? "precopy is off for this migration" : note));
  }
  if (!live_) {
    return conflict("is not a live pre-copy: its memory is paused already (" +
                    std::string(spec_.snapshot_file.empty()
                                    ? "one fd handed over, no write tracking"
                                    : "a snapshot file") +
                    ")");
  }
  if (precopy_->switched()) return conflict("has already switched to post-copy");
  const Bitmap& stale = precopy_->pause();
  log_.info("source paused: pre-copy switches to post-copy", {{"stale_pages", stale.count()}});
  {
    // A restarted agent must not take the memory for live again (nor hold requests).
    std::lock_guard lock(runtime_mu_);
    runtime_.precopy_switched = true;
  }
  persist();
  bulk_.switchToPostCopy();
  // A request the urgent loop reads from here on is served at once; one it held before is
  // served by the task posted after this store, which runs after whatever held it.
  hold_urgent_.store(false);
  urgent_loop_->post([this] { serveHeldRequests(); });
  return {};
}

std::string SourceMigration::precopyNote() const {
  std::lock_guard lock(runtime_mu_);
  return precopy_note_;
}

void SourceMigration::holdRequests(const std::vector<std::uint64_t>& pages) {
  LAZYMIG_ASSERT_ON_LOOP(*urgent_loop_);
  // Before the switch the memory still changes: a page served now could be installed older
  // than the paused memory. The destination's VM cannot run yet; these wait for the pause.
  if (held_pages_.size() + pages.size() > kHeldRequestLimit) {
    log_.warn("the peer requests pages before the switch without end; closing the urgent channel",
              {{"held_pages", static_cast<std::uint64_t>(held_pages_.size())}});
    recorder_.refusal("flood");
    return dropUrgent();
  }
  held_pages_.insert(held_pages_.end(), pages.begin(), pages.end());
}

void SourceMigration::serveHeldRequests() {
  LAZYMIG_ASSERT_ON_LOOP(*urgent_loop_);
  if (!urgent_) return held_pages_.clear();
  for (auto page : held_pages_) serveDemandPage(page, std::nullopt);
  peer_loop_.post([this, pages = std::move(held_pages_)] { demandServed(pages); });
  held_pages_.clear();
}

}  // namespace lazymig::agent
