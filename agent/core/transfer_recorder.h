// The one place a migration's transfer accounting is written: each call updates the
// migration's own stats (what the control API reports for this migration) and the agent's
// Prometheus families (summed over migrations) together, so the two cannot drift apart and no
// caller checks for a missing metrics registry (unit tests and tools run without one).
//
// Cheap to copy (two pointers): each flow (fault service, bulk receiver, source channels) keeps
// its own. Thread-safe: stats are atomics and the Prometheus series are lock-free counters.
#pragma once

#include <chrono>
#include <cstdint>
#include <optional>
#include <string_view>

#include "agent/core/migration_stats.h"
#include "metrics/metrics.h"

namespace lazymig::agent {

class TransferRecorder {
 public:
  // `metrics` may be null: then only the stats are kept.
  TransferRecorder(MigrationStats& stats, metrics::AgentMetrics* metrics)
      : stats_(&stats), metrics_(metrics) {}

  // Destination: `pages` arrived by `path` and were installed by this side. They leave the
  // pages-remaining gauge. Installs that found the page present (EEXIST: another path won the
  // race) are `already_present`, counted apart and not as installed.
  void pagesInstalled(metrics::PagePath path, std::uint64_t pages,
                      std::uint64_t already_present = 0) const;
  // Destination: pages the guest discarded (balloon) before they arrived; never sent.
  void pagesRemoved(std::uint64_t pages) const;
  // Pages a migration still has to install, summed over migrations (a gauge): +total when one
  // starts, -what is left when it ends without them.
  void pagesRemaining(std::int64_t delta) const;
  // Bytes on the wire (frame headers included), by channel and direction.
  void wireBytes(metrics::Channel channel, metrics::Direction direction, std::uint64_t bytes) const;
  // Destination: a demand fault read from the uffd (`faultRead`) and, once woken, how long its
  // vCPU waited and by which path it was served (`faultServed`, exactly once per fault).
  void faultRead() const;
  void faultServed(metrics::FaultPath path, std::chrono::nanoseconds latency) const;
  // Destination: where one demand fault served over the network spent its time (its
  // faultServed latency is the sum of the phases), and the part of its source_wait the source
  // measured itself (status only: it is not a phase of its own).
  void faultPhases(const FaultPhaseDurations& phases,
                   std::chrono::nanoseconds source_wait_seen) const;
  // Source: pages requested on the urgent channel, and pages sent by how they went. Served
  // pages stay in the stats only: lazymig_pages_total counts installed pages, at the
  // destination, so that a migration between two agents of one fleet is counted once.
  void pagesRequested(std::uint64_t pages) const;
  void pagesServed(metrics::PagePath path, std::uint64_t pages) const;
  void reconnect(metrics::Channel channel) const;
  // Destination, pre-copy: what became of pages sent before the switch, and the switch itself.
  // Metrics only: the migration's status reads its staging (PrecopyStaging) directly.
  void precopyPages(metrics::PrecopyPages what, std::uint64_t pages) const;
  void precopySwitch() const;
  // Source, pre-copy: one round ended (its pages sent, duration, and the dirty rate its scan
  // found, none for round 1), and the switch at the pause (why, and the stale pages). Metrics
  // only: the migration's status reads PrecopySource directly.
  void precopyRound(std::uint64_t pages_sent, std::chrono::nanoseconds duration,
                    std::optional<double> dirty_pages_per_s) const;
  void precopySourceSwitch(std::string_view reason, std::uint64_t stale_pages) const;
  // A refusal (one of metrics::kRefusalReasons); metrics only.
  void refusal(std::string_view reason) const;

 private:
  MigrationStats* stats_;
  metrics::AgentMetrics* metrics_;
};

}  // namespace lazymig::agent
