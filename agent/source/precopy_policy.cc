#include "agent/source/precopy_policy.h"

namespace lazymig::agent {

std::string_view switchReasonName(SwitchReason reason) {
  switch (reason) {
    case SwitchReason::kFewPagesLeft:
      return "few_pages_left";
    case SwitchReason::kNotShrinking:
      return "not_shrinking";
    case SwitchReason::kRoundsDone:
      return "rounds_done";
    case SwitchReason::kDeadline:
      return "deadline";
  }
  return "unknown";
}

std::optional<SwitchReason> decideSwitch(const PrecopyPolicy& policy,
                                         const std::vector<PrecopyRound>& rounds,
                                         std::chrono::nanoseconds elapsed) {
  if (policy.mode == PrecopyPolicy::Mode::kOff) return SwitchReason::kRoundsDone;
  if (elapsed >= policy.deadline) return SwitchReason::kDeadline;
  const std::size_t n = rounds.size();
  if (policy.mode == PrecopyPolicy::Mode::kRounds) {
    if (n >= policy.rounds) return SwitchReason::kRoundsDone;
    return std::nullopt;
  }
  // Round 1 sends everything: what it says about the guest's writes is nothing yet.
  if (n < 2) return std::nullopt;
  if (rounds.back().pages <= policy.few_pages) return SwitchReason::kFewPagesLeft;
  if (n >= policy.max_rounds) return SwitchReason::kRoundsDone;
  auto shrank = [&](std::size_t i) {
    return static_cast<double>(rounds[i].pages) <
           policy.shrink_ratio * static_cast<double>(rounds[i - 1].pages);
  };
  // Rounds 2 and later are the guest's writes during the round before; compare those only.
  if (n >= 4 && !shrank(n - 1) && !shrank(n - 2)) return SwitchReason::kNotShrinking;
  return std::nullopt;
}

}  // namespace lazymig::agent
