#include "agent/source/bulk_rate_limiter.h"

#include <algorithm>
#include <cstdint>

namespace lazymig::agent {

BulkRateLimiter::Clock::duration BulkRateLimiter::waitFor(double bytes, Clock::time_point now) {
  if (!limited()) return Clock::duration::zero();
  const double elapsed = std::chrono::duration<double>(now - refilled_).count();
  refilled_ = now;
  // The bucket holds a tenth of a second, but never less than what is asked for: below
  // ~2.5 MiB/s a tenth of a second is less than one 256 KiB batch, and a bucket that can never
  // hold a batch would stall the stream for good.
  tokens_ = std::min(tokens_ + elapsed * rate_, std::max(rate_ / 10, bytes));
  if (tokens_ >= bytes) return Clock::duration::zero();
  return std::chrono::microseconds(static_cast<std::int64_t>((bytes - tokens_) / rate_ * 1e6) + 1);
}

}  // namespace lazymig::agent
