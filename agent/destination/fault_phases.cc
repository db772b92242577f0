#include "agent/destination/fault_phases.h"

#include <algorithm>
#include <cstdint>
#include <limits>

namespace lazymig::agent {

using std::chrono::nanoseconds;
using Phase = metrics::FaultPhase;

FaultPhaseDurations splitFaultPhases(const ReplyMoments& at, const SourceDurations& source,
                                     std::chrono::microseconds min_rtt) {
  const auto nonNegative = [](nanoseconds d) { return std::max(d, nanoseconds(0)); };
  const nanoseconds before_send = nonNegative(at.request_sent - at.fault_read);
  const nanoseconds round_trip = nonNegative(at.reply_read - at.request_sent);
  const nanoseconds after_reply = nonNegative(at.woken - at.reply_read);
  const nanoseconds served = std::clamp(source.served, nanoseconds(0), round_trip);
  const nanoseconds waited = std::clamp(source.waited, nanoseconds(0), round_trip - served);
  const nanoseconds unseen = round_trip - served - waited;  // the wires and unseen queues
  const nanoseconds half = std::min<nanoseconds>(nanoseconds(min_rtt) / 2, unseen / 2);
  FaultPhaseDurations phases{};
  phases[static_cast<std::size_t>(Phase::kDestinationWait)] = before_send;
  phases[static_cast<std::size_t>(Phase::kRequestWire)] = half;
  phases[static_cast<std::size_t>(Phase::kSourceWait)] = waited + (unseen - 2 * half);
  phases[static_cast<std::size_t>(Phase::kSourceWork)] = served;
  phases[static_cast<std::size_t>(Phase::kReplyWire)] = half;
  phases[static_cast<std::size_t>(Phase::kInstallWake)] = after_reply;
  return phases;
}

void FaultPhaseTimer::linkOpened() {
  awaiting_.clear();
  source_sends_ = false;
}

void FaultPhaseTimer::replied(PageIndex page, const ReplyMoments& at) {
  const std::size_t limit = source_sends_ ? kConfirmedLimit : kUnconfirmedLimit;
  if (awaiting_.size() >= limit) return;  // this fault goes untimed; its latency is counted
  awaiting_.insert_or_assign(page.value, at);
}

void FaultPhaseTimer::serveTimes(const transport::ServeTimes& times,
                                 std::optional<transport::TcpPath> path) {
  source_sends_ = true;
  auto it = awaiting_.find(times.page);
  if (it == awaiting_.end()) return;
  const ReplyMoments at = it->second;
  awaiting_.erase(it);
  const auto ns = [](std::uint64_t v) {
    constexpr std::uint64_t kMax = std::numeric_limits<std::int64_t>::max();
    return nanoseconds(static_cast<std::int64_t>(std::min(v, kMax)));
  };
  const SourceDurations source{ns(times.waited_ns), ns(times.served_ns)};
  const auto phases =
      splitFaultPhases(at, source, path ? path->min_rtt : std::chrono::microseconds(0));
  // source_wait is what the source saw (cut to the round trip) plus what nobody saw.
  recorder_.faultPhases(
      phases, std::min(source.waited, phases[static_cast<std::size_t>(Phase::kSourceWait)]));
}

nlohmann::json faultPhasesJson(const MigrationStats& stats) {
  const auto us = [](nanoseconds ns) { return static_cast<double>(ns.count()) / 1000.0; };
  const auto summary = [&us](const LatencyHistogram& h) {
    const auto n = h.count();
    return nlohmann::json{{"p50", us(h.percentile(0.5))},
                          {"p99", us(h.percentile(0.99))},
                          {"mean", n ? us(h.sum()) / static_cast<double>(n) : 0.0}};
  };
  nlohmann::json out{{"count", stats.fault_phases_total.count()},
                     {"total", summary(stats.fault_phases_total)}};
  for (std::size_t i = 0; i < metrics::kFaultPhases; ++i) {
    out[std::string(metrics::kFaultPhaseNames[i])] = summary(stats.fault_phases[i]);
  }
  // Not a phase: the part of source_wait the source measured (the rest nobody saw).
  out["source_wait_seen_by_source"] = summary(stats.fault_source_wait_seen);
  // The tail explained fault by fault: the slowest timed faults, slowest first.
  nlohmann::json slowest = nlohmann::json::array();
  for (const auto& phases : stats.slowest_faults.slowestFirst()) {
    nlohmann::json fault{{"total", us(totalOf(phases))}};
    for (std::size_t i = 0; i < metrics::kFaultPhases; ++i) {
      fault[std::string(metrics::kFaultPhaseNames[i])] = us(phases[i]);
    }
    slowest.push_back(std::move(fault));
  }
  out["slowest"] = std::move(slowest);
  return out;
}

}  // namespace lazymig::agent
