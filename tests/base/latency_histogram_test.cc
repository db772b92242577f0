#include "base/latency_histogram.h"

#include <gtest/gtest.h>

using namespace std::chrono_literals;

namespace lazymig {

TEST(LatencyHistogram, EmptyReportsZero) {
  LatencyHistogram h;
  EXPECT_EQ(h.count(), 0u);
  EXPECT_EQ(h.percentile(0.5), 0ns);
}

TEST(LatencyHistogram, PercentilesWithinResolution) {
  LatencyHistogram h;
  for (int i = 1; i <= 1000; ++i) h.record(std::chrono::microseconds(i));
  EXPECT_EQ(h.count(), 1000u);
  auto p50 = h.percentile(0.5);
  auto p99 = h.percentile(0.99);
  EXPECT_NEAR(static_cast<double>(p50.count()), 500e3, 500e3 * 0.04);
  EXPECT_NEAR(static_cast<double>(p99.count()), 990e3, 990e3 * 0.04);
  EXPECT_EQ(h.max(), 1000us);
  EXPECT_EQ(h.percentile(1.0), 1000us);
}

TEST(LatencyHistogram, SmallValuesAreExact) {
  LatencyHistogram h;
  h.record(7ns);
  EXPECT_EQ(h.percentile(0.5), 7ns);
}

}  // namespace lazymig
