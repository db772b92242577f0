// The token bucket behind migration.bulk_rate_limit_mib_s: bulk bytes may go while there are
// tokens; tokens refill at the rate, and at most a tenth of a second of them (or one batch,
// when a batch is more) accumulates, so that the cap holds over short windows too. Charged with
// what went on the wire, not with the batch asked for: runs pulled forward by faults are often a
// few pages.
//
// Not thread-safe (the bulk sender's loop owns it); time is passed in, so tests step it.
#pragma once

#include <chrono>

namespace lazymig::agent {

class BulkRateLimiter {
 public:
  using Clock = std::chrono::steady_clock;
  // 0: unlimited.
  explicit BulkRateLimiter(double bytes_per_second) : rate_(bytes_per_second) {}

  bool limited() const { return rate_ > 0; }
  // Refills for the time since the last call, then: how long until `bytes` may go (zero when
  // they may go now). The first call finds a full bucket.
  Clock::duration waitFor(double bytes, Clock::time_point now);
  void charge(double bytes) { tokens_ -= bytes; }

 private:
  double rate_;
  double tokens_ = 0;
  Clock::time_point refilled_{};
};

}  // namespace lazymig::agent
