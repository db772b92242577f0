// The bulk stream's token bucket, stepped with injected time.
#include "agent/source/bulk_rate_limiter.h"

#include <gtest/gtest.h>

namespace lazymig::agent {
namespace {

using namespace std::chrono_literals;
using Clock = BulkRateLimiter::Clock;

TEST(BulkRateLimiter, UnlimitedNeverWaits) {
  BulkRateLimiter limiter(0);
  EXPECT_FALSE(limiter.limited());
  EXPECT_EQ(limiter.waitFor(1e12, Clock::now()), Clock::duration::zero());
}

TEST(BulkRateLimiter, StartsWithATenthOfASecondAndRefillsAtTheRate) {
  BulkRateLimiter limiter(1e6);  // a megabyte a second: a bucket of 100 kB
  const auto t0 = Clock::now();
  EXPECT_EQ(limiter.waitFor(100e3, t0), Clock::duration::zero());
  limiter.charge(100e3);
  // Empty: 50 kB take 50 ms.
  auto wait = limiter.waitFor(50e3, t0);
  EXPECT_GE(wait, 50ms);
  EXPECT_LT(wait, 51ms);
  // 20 ms later, 20 kB are back: 30 ms to go.
  wait = limiter.waitFor(50e3, t0 + 20ms);
  EXPECT_GE(wait, 30ms);
  EXPECT_LT(wait, 31ms);
  EXPECT_EQ(limiter.waitFor(50e3, t0 + 50ms), Clock::duration::zero());
}

TEST(BulkRateLimiter, IdleTimeBanksAtMostTheBucket) {
  BulkRateLimiter limiter(1e6);
  const auto t0 = Clock::now();
  EXPECT_EQ(limiter.waitFor(1, t0), Clock::duration::zero());
  // An hour idle still leaves only a tenth of a second of bytes.
  EXPECT_EQ(limiter.waitFor(100e3, t0 + 1h), Clock::duration::zero());
  limiter.charge(100e3);
  EXPECT_GT(limiter.waitFor(1, t0 + 1h), Clock::duration::zero());
}

// Below ~2.5 MiB/s a tenth of a second is less than one 256 KiB batch: the bucket must still
// hold a batch, or the stream waits for ever (a bucket capped under the batch never has it).
TEST(BulkRateLimiter, ABatchLargerThanATenthOfASecondStillGoesAtTheRate) {
  BulkRateLimiter limiter(1e6);  // a bucket of 100 kB, a batch of 256 KiB
  const double batch = 256.0 * 1024;
  const auto t0 = Clock::now();
  ASSERT_EQ(limiter.waitFor(batch, t0), Clock::duration::zero());
  limiter.charge(batch);
  const auto wait = limiter.waitFor(batch, t0);
  EXPECT_GE(wait, 262ms);
  EXPECT_LT(wait, 263ms);
  EXPECT_EQ(limiter.waitFor(batch, t0 + wait), Clock::duration::zero());
}

// Charged with what went on the wire, which may be more than the batch asked for: the debt
// is paid back before the next batch goes.
TEST(BulkRateLimiter, AnOverdraftDelaysTheNextBatch) {
  BulkRateLimiter limiter(1e6);
  const auto t0 = Clock::now();
  ASSERT_EQ(limiter.waitFor(100e3, t0), Clock::duration::zero());
  limiter.charge(150e3);  // 50 kB in debt
  auto wait = limiter.waitFor(10e3, t0);
  EXPECT_GE(wait, 60ms);
  EXPECT_LT(wait, 61ms);
}

}  // namespace
}  // namespace lazymig::agent
