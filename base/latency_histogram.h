// A lock-free log-linear latency histogram (about 3% resolution from 1 ns to ~1 hour) that
// several threads record into and anyone reads percentiles from. It backs the per-migration
// report; Prometheus gets its own fixed-bucket histogram from metrics/.
#pragma once

#include <array>
#include <atomic>
#include <chrono>
#include <cstdint>

namespace lazymig {

// The quantiles at which reports give a latency distribution (its CDF, e.g. the migration
// object's fault_latency_cdf_us): every 5% and dense in the tail, where a guest notices. One
// list, so that the agent's and the test VM's distributions line up point for point.
inline constexpr std::array<double, 27> kLatencyCdfQuantiles = {
    0.01, 0.02, 0.05, 0.10, 0.15, 0.20, 0.25, 0.30, 0.35, 0.40, 0.45,  0.50,  0.55, 0.60,
    0.65, 0.70, 0.75, 0.80, 0.85, 0.90, 0.95, 0.97, 0.98, 0.99, 0.995, 0.998, 0.999};

class LatencyHistogram {
 public:
  void record(std::chrono::nanoseconds latency);
  std::uint64_t count() const { return count_.load(std::memory_order_relaxed); }
  std::chrono::nanoseconds max() const {
    return std::chrono::nanoseconds(max_ns_.load(std::memory_order_relaxed));
  }
  std::chrono::nanoseconds sum() const {
    return std::chrono::nanoseconds(sum_ns_.load(std::memory_order_relaxed));
  }
  // q in [0, 1]; returns the upper edge of the bucket holding the q-th sample (0 when empty).
  std::chrono::nanoseconds percentile(double q) const;

 private:
  static constexpr int kSubBits = 5;  // 32 sub-buckets per power of two
  static constexpr int kSubBuckets = 1 << kSubBits;
  static constexpr int kExponents = 42;  // up to 2^42 ns, about 73 minutes
  static constexpr int kBuckets = kExponents * kSubBuckets;
  static int bucketOf(std::uint64_t ns);
  static std::uint64_t upperEdge(int bucket);

  std::array<std::atomic<std::uint64_t>, kBuckets> buckets_{};
  std::atomic<std::uint64_t> count_{0};
  std::atomic<std::uint64_t> sum_ns_{0};
  std::atomic<std::uint64_t> max_ns_{0};
};

}  // namespace lazymig
