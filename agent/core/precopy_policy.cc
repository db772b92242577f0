#include "agent/core/precopy_policy.h"

#include <charconv>

namespace lazymig::agent {

Result<PrecopyPolicy> parsePrecopyPolicy(std::string_view text,
                                         std::chrono::milliseconds deadline) {
  auto bad = [&](const std::string& why) {
    return fail(Errc::kInvalidArgument, "precopy",
                "'" + std::string(text) + "': " + why + " (expected off, auto or rounds N)");
  };
  if (deadline <= std::chrono::milliseconds::zero()) return bad("the deadline must be positive");
  PrecopyPolicy policy;
  policy.deadline = deadline;
  if (text == "off") return policy;
  if (text == "auto") {
    policy.mode = PrecopyPolicy::Mode::kAuto;
    return policy;
  }
  constexpr std::string_view kRounds = "rounds ";
  if (!text.starts_with(kRounds)) return bad("unknown mode");
  std::string_view number = text.substr(kRounds.size());
  unsigned n = 0;
  auto [end, err] = std::from_chars(number.data(), number.data() + number.size(), n);
  if (err != std::errc() || end != number.data() + number.size() || number.empty()) {
    return bad("N must be a whole number");
  }
  if (n < 1 || n > 1000) return bad("N must be from 1 to 1000");
  policy.mode = PrecopyPolicy::Mode::kRounds;
  policy.rounds = n;
  return policy;
}

std::string precopyPolicyText(const PrecopyPolicy& policy) {
  switch (policy.mode) {
    case PrecopyPolicy::Mode::kOff:
      return "off";
    case PrecopyPolicy::Mode::kAuto:
      return "auto";
    case PrecopyPolicy::Mode::kRounds:
      return "rounds " + std::to_string(policy.rounds);
  }
  return "off";
}

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
