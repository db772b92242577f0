// When pre-copy stops copying a running source VM and hands over to post-copy: the per-migration
// knob (`precopy: off | auto | rounds N`, with a deadline) and the switch decision made after
// every round from what the rounds measured.
#pragma once

#include <chrono>
#include <cstdint>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

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
};

// "off", "auto", or "rounds N" (N from 1 to 1000). Errors name the knob and what was wrong.
Result<PrecopyPolicy> parsePrecopyPolicy(std::string_view text, std::chrono::milliseconds deadline);
// The knob as parsePrecopyPolicy reads it back ("off", "auto", "rounds 3").
std::string precopyPolicyText(const PrecopyPolicy& policy);

// What one round did: the pages it sent (the pages written since the round before it; every
// non-zero page in round 1) and how long it took.
struct PrecopyRound {
  unsigned number = 0;  // 1-based
  std::uint64_t pages = 0;
  std::chrono::nanoseconds duration{0};
};

enum class SwitchReason { kFewPagesLeft, kNotShrinking, kRoundsDone, kDeadline };
std::string_view switchReasonName(SwitchReason reason);

// Whether to stop after the rounds so far (`elapsed` since pre-copy began) and pause the
// source, and why; nothing: run another round.
std::optional<SwitchReason> decideSwitch(const PrecopyPolicy& policy,
                                         const std::vector<PrecopyRound>& rounds,
                                         std::chrono::nanoseconds elapsed);

}  // namespace lazymig::agent
