#include "base/latency_histogram.h"

#include <bit>

namespace lazymig {

int LatencyHistogram::bucketOf(std::uint64_t ns) {
  if (ns < kSubBuckets) return static_cast<int>(ns);
  int exp = static_cast<int>(std::bit_width(ns)) - 1;  // ns in [2^exp, 2^(exp+1))
  int shift = exp - kSubBits;
  int sub = static_cast<int>((ns >> shift) & (kSubBuckets - 1));
  int bucket = (shift + 1) * kSubBuckets + sub;
  return bucket < kBuckets ? bucket : kBuckets - 1;
}

std::uint64_t LatencyHistogram::upperEdge(int bucket) {
  if (bucket < kSubBuckets) return static_cast<std::uint64_t>(bucket);
  int shift = bucket / kSubBuckets - 1;
  std::uint64_t sub = static_cast<std::uint64_t>(bucket % kSubBuckets);
  return ((std::uint64_t{kSubBuckets} + sub + 1) << shift) - 1;
}

void LatencyHistogram::record(std::chrono::nanoseconds latency) {
  auto ns = static_cast<std::uint64_t>(latency.count() < 0 ? 0 : latency.count());
  buckets_[bucketOf(ns)].fetch_add(1, std::memory_order_relaxed);
  count_.fetch_add(1, std::memory_order_relaxed);
  sum_ns_.fetch_add(ns, std::memory_order_relaxed);
  auto prev = max_ns_.load(std::memory_order_relaxed);
  while (ns > prev && !max_ns_.compare_exchange_weak(prev, ns, std::memory_order_relaxed)) {
  }
}

std::chrono::nanoseconds LatencyHistogram::percentile(double q) const {
  std::uint64_t total = count();
  if (total == 0) return std::chrono::nanoseconds(0);
  if (q < 0) q = 0;
  if (q > 1) q = 1;
  auto rank = static_cast<std::uint64_t>(q * static_cast<double>(total - 1)) + 1;
  std::uint64_t seen = 0;
  for (int b = 0; b < kBuckets; ++b) {
    seen += buckets_[b].load(std::memory_order_relaxed);
    if (seen >= rank) {
      auto edge = upperEdge(b);
      auto mx = static_cast<std::uint64_t>(max().count());
      return std::chrono::nanoseconds(edge < mx ? edge : mx);
    }
  }
  return max();
}

}  // namespace lazymig
