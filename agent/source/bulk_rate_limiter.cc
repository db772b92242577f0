#include "agent/source/bulk_rate_limiter.h"

#include <algorithm>
#include <cstdint>

namespace lazymig::agent {

BulkRateLimiter::Clock::duration BulkRateLimiter::waitFor(double bytes, Clock::time_point now) {
  if (!limited()) return Clock::duration::zero();
  const double elapsed = std::chrono::duration<double>(now - refilled_).count();
  refilled_ = now;
  tokens_ = std::min(tokens_ + elapsed * rate_, rate_ / 10);
  if (tokens_ >= bytes) return Clock::duration::zero();
  return std::chrono::microseconds(static_cast<std::int64_t>((bytes - tokens_) / rate_ * 1e6) + 1);
}

}  // namespace lazymig::agent
