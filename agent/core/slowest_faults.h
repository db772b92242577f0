// The tail of the demand faults explained one fault at a time: the phases of the slowest timed
// faults of a migration. Percentiles per phase say how long each phase gets; these say what
// the slowest faults themselves were made of. The urgent loop offers every timed fault, the
// control loop reads; a fault faster than every kept one costs one relaxed atomic load.
#pragma once

#include <array>
#include <atomic>
#include <chrono>
#include <cstddef>
#include <mutex>
#include <vector>

#include "metrics/metrics.h"

namespace lazymig::agent {

// One fault's phases, in metrics::FaultPhase order.
using FaultPhaseDurations = std::array<std::chrono::nanoseconds, metrics::kFaultPhases>;

class SlowestFaults {
 public:
  static constexpr std::size_t kKept = 8;

  void offer(const FaultPhaseDurations& phases);
  // The kept faults, slowest first.
  std::vector<FaultPhaseDurations> slowestFirst() const;

 private:
  mutable std::mutex mu_;
  std::vector<FaultPhaseDurations> kept_;  // at most kKept
  // The fastest kept fault's latency once kKept are kept: anything not slower is not kept.
  std::atomic<std::int64_t> bar_ns_{0};
};

std::chrono::nanoseconds totalOf(const FaultPhaseDurations& phases);

}  // namespace lazymig::agent
