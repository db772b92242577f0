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

}  // namespace lazymig::agent
