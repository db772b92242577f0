// When pre-copy stops copying a running source VM and hands over to post-copy: the switch
// decision made after every round from what the rounds measured, by the per-migration knob
// (PrecopyPolicy, in agent/core: both roles read it from the spec).
#pragma once

#include <chrono>
#include <cstdint>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "agent/core/precopy_policy.h"
#include "base/error.h"

namespace lazymig::agent {

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
