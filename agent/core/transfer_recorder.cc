#include "agent/core/transfer_recorder.h"

namespace lazymig::agent {

namespace {
constexpr auto kRelaxed = std::memory_order_relaxed;
}  // namespace

void TransferRecorder::pagesInstalled(metrics::PagePath path, std::uint64_t pages,
                                      std::uint64_t already_present) const {
  auto& counter = path == metrics::PagePath::kDemand ? stats_->demand_pages
                  : path == metrics::PagePath::kBulk ? stats_->bulk_pages
                                                     : stats_->zero_pages;
  counter.fetch_add(pages, kRelaxed);
  stats_->eexist_races.fetch_add(already_present, kRelaxed);
  if (!metrics_) return;
  metrics_->addPages(path, pages);
  metrics_->addPagesRemaining(-static_cast<std::int64_t>(pages));
  if (already_present) metrics_->addUffdExists(already_present);
}

void TransferRecorder::pagesRemoved(std::uint64_t pages) const {
  stats_->removed_pages.fetch_add(pages, kRelaxed);
  if (metrics_ && pages > 0) metrics_->addPagesRemaining(-static_cast<std::int64_t>(pages));
}

void TransferRecorder::pagesRemaining(std::int64_t delta) const {
  if (metrics_ && delta != 0) metrics_->addPagesRemaining(delta);
}

void TransferRecorder::wireBytes(metrics::Channel channel, metrics::Direction direction,
                                 std::uint64_t bytes) const {
  (direction == metrics::Direction::kSent ? stats_->bytes_sent : stats_->bytes_received)
      .fetch_add(bytes, kRelaxed);
  stats_->wire_bytes[static_cast<int>(channel)][static_cast<int>(direction)].fetch_add(bytes,
                                                                                       kRelaxed);
  if (metrics_) metrics_->addWireBytes(channel, direction, bytes);
}

void TransferRecorder::faultRead() const { stats_->demand_faults.fetch_add(1, kRelaxed); }

void TransferRecorder::faultServed(metrics::FaultPath path,
                                   std::chrono::nanoseconds latency) const {
  stats_->fault_latency.record(latency);
  if (metrics_) metrics_->observeFault(path, latency);
}

void TransferRecorder::faultPhases(const FaultPhaseDurations& phases,
                                   std::chrono::nanoseconds source_wait_seen) const {
  stats_->fault_source_wait_seen.record(source_wait_seen);
  std::chrono::nanoseconds total{0};
  for (std::size_t i = 0; i < phases.size(); ++i) {
    stats_->fault_phases[i].record(phases[i]);
    total += phases[i];
    if (metrics_) metrics_->observeFaultPhase(static_cast<metrics::FaultPhase>(i), phases[i]);
  }
  stats_->fault_phases_total.record(total);
  stats_->slowest_faults.offer(phases);
}

void TransferRecorder::pagesRequested(std::uint64_t pages) const {
  stats_->demand_faults.fetch_add(pages, kRelaxed);
}

void TransferRecorder::pagesServed(metrics::PagePath path, std::uint64_t pages) const {
  auto& counter = path == metrics::PagePath::kDemand ? stats_->served_demand_pages
                  : path == metrics::PagePath::kBulk ? stats_->served_bulk_pages
                                                     : stats_->served_zero_pages;
  counter.fetch_add(pages, kRelaxed);
}

void TransferRecorder::reconnect(metrics::Channel channel) const {
  stats_->reconnects.fetch_add(1, kRelaxed);
  if (metrics_) metrics_->addReconnect(channel);
}

void TransferRecorder::refusal(std::string_view reason) const {
  if (metrics_) metrics_->addRefusal(reason);
}

void TransferRecorder::precopyPages(metrics::PrecopyPages what, std::uint64_t pages) const {
  if (metrics_ && pages > 0) metrics_->addPrecopyPages(what, pages);
}

void TransferRecorder::precopySwitch() const {
  if (metrics_) metrics_->addPrecopySwitch();
}

void TransferRecorder::precopyRound(std::uint64_t pages_sent, std::chrono::nanoseconds duration,
                                    std::optional<double> dirty_pages_per_s) const {
  if (metrics_) metrics_->observePrecopyRound(pages_sent, duration, dirty_pages_per_s);
}

void TransferRecorder::precopySourceSwitch(std::string_view reason,
                                           std::uint64_t stale_pages) const {
  if (metrics_) metrics_->addPrecopySourceSwitch(reason, stale_pages);
}

}  // namespace lazymig::agent
