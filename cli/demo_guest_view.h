// The guest's own view of a demo migration: its rate of work before (not migrating), during
// and after the migration, the share of work it lost, the agent's fault and bulk rates
// sampled over the same time, and the summary lines and plot made of them.
#pragma once

#include <atomic>
#include <chrono>
#include <string>
#include <thread>
#include <vector>

#include <nlohmann/json.hpp>

#include "base/error.h"

namespace lazymig::cli {

// The destination agent's counters over time, polled from its control API.
struct MigrationSample {
  double unix_ms = 0;
  std::uint64_t demand_faults = 0;
  std::uint64_t bulk_pages = 0;
};

class MigrationSampler {
 public:
  // Polls GET /v1/migrations/`id` on `endpoint` every `every` until stopped.
  void start(const std::string& endpoint, const std::string& id, std::chrono::milliseconds every);
  // Stops polling; returns the samples taken.
  std::vector<MigrationSample> stop();
  ~MigrationSampler() { stop(); }

 private:
  std::thread thread_;
  std::atomic<bool> stop_{false};
  std::vector<MigrationSample> samples_;  // the thread's until it is joined
};

// guest_rate {unit, before, during, after} and degradation from the destination test VM's
// guest_view (see lazymig-testvm --baseline): before is the same guest not migrating; during
// the guest's rate from its start until the migration completed (or its workload ended);
// after its rate from then to its end (null when it ended first); degradation the share of
// the work the guest would have done in that time that the migration cost it.
nlohmann::json guestRateJson(const nlohmann::json& guest_view);

// The lines `lazymig demo` prints about the vCPUs and the guest's rate.
void printGuestSummary(const nlohmann::json& report);

// Writes the SVG: guest throughput over time, migrating and not, with the destination's
// demand-fault rate and bulk rate below it.
Status writeGuestPlot(const std::string& path, const nlohmann::json& report,
                      const nlohmann::json& guest_view,
                      const std::vector<MigrationSample>& samples);

}  // namespace lazymig::cli
