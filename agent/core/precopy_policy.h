// The per-migration pre-copy knob (`precopy: off | auto | rounds N`, with a deadline), shared by
// both roles: the source runs rounds by it (agent/source/precopy_policy.h decides the switch),
// the destination connects its bulk link at creation and stages round pages when it is not off.
#pragma once

#include <chrono>
#include <cstdint>
#include <string>
#include <string_view>

#include "base/error.h"

namespace lazymig::agent {

struct PrecopyPolicy {
  enum class Mode { kOff, kAuto, kRounds };
  Mode mode = Mode::kOff;
  unsigned rounds = 0;  // kRounds: exactly this many rounds (fewer at the deadline)
  std::chrono::milliseconds deadline{std::chrono::seconds(60)};
  // kAuto: switch when a round found at most this many pages written: the pause then leaves
  // little for post-copy to fetch on demand.
  std::uint64_t few_pages = 1024;
  // kAuto: a round counts as shrinking when it found less than this share of the previous
  // round's pages; two rounds in a row that do not shrink mean the guest writes as fast as
  // the link copies, and more rounds would only resend its hot set.
  double shrink_ratio = 0.8;
  // kAuto: never more rounds than this, whatever the rounds measure.
  unsigned max_rounds = 30;

  bool enabled() const { return mode != Mode::kOff; }
};

// "off", "auto", or "rounds N" (N from 1 to 1000). Errors name the knob and what was wrong.
Result<PrecopyPolicy> parsePrecopyPolicy(std::string_view text, std::chrono::milliseconds deadline);
// The text parsePrecopyPolicy reads back: "off", "auto", "rounds N".
std::string precopyPolicyText(const PrecopyPolicy& policy);

}  // namespace lazymig::agent
