#include "agent/core/slowest_faults.h"

#include <algorithm>
#include <numeric>

namespace lazymig::agent {

std::chrono::nanoseconds totalOf(const FaultPhaseDurations& phases) {
  return std::accumulate(phases.begin(), phases.end(), std::chrono::nanoseconds(0));
}

void SlowestFaults::offer(const FaultPhaseDurations& phases) {
  const auto total = totalOf(phases);
  if (total.count() <= bar_ns_.load(std::memory_order_relaxed)) return;
  std::lock_guard lock(mu_);
  const auto slower = [](const FaultPhaseDurations& a, const FaultPhaseDurations& b) {
    return totalOf(a) > totalOf(b);
  };
  kept_.insert(std::upper_bound(kept_.begin(), kept_.end(), phases, slower), phases);
  if (kept_.size() > kKept) kept_.pop_back();
  if (kept_.size() == kKept)
    bar_ns_.store(totalOf(kept_.back()).count(), std::memory_order_relaxed);
}

std::vector<FaultPhaseDurations> SlowestFaults::slowestFirst() const {
  std::lock_guard lock(mu_);
  return kept_;
}

}  // namespace lazymig::agent
