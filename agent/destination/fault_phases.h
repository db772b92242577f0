// Where a demand fault's time goes (issue 14): each fault served over the network is split
// into six phases that add up to its latency, from clocks each side can read honestly -- the
// destination's steady clock for what it sees, the source's own durations (ServeTimes, sent
// after the reply) for what it does, and the kernel's TCP round trip (TCP_INFO) to split the
// remainder. What each phase can and cannot see: docs/performance.md.
//
// FaultPhaseTimer lives on the urgent loop with FaultService: a reply's destination times wait
// there until the source's ServeTimes for the page arrives (the frame right after the reply).
#pragma once

#include <chrono>
#include <cstdint>
#include <optional>
#include <unordered_map>

#include <nlohmann/json.hpp>

#include "agent/core/migration_stats.h"
#include "agent/core/transfer_recorder.h"
#include "base/units.h"
#include "transport/frame.h"
#include "transport/tcp_path.h"

namespace lazymig::agent {

// One demand page's moments on the destination's steady clock.
struct ReplyMoments {
  std::chrono::steady_clock::time_point fault_read;    // the fault that asked for the page
  std::chrono::steady_clock::time_point request_sent;  // its PageRequest handed to the link
  std::chrono::steady_clock::time_point reply_read;    // the reply frame taken off the link
  std::chrono::steady_clock::time_point woken;         // installed, every waiter woken
};

// The source's own durations for the page (ServeTimes), on its clock.
struct SourceDurations {
  std::chrono::nanoseconds waited{0};
  std::chrono::nanoseconds served{0};
};

// The six phases of one fault (metrics::FaultPhase order); they add up to woken - fault_read
// exactly. The round trip left after the source's own figures is split with `min_rtt`: half of
// it to each wire phase (never more than the remainder), the rest to source_wait. Without a
// round trip figure the whole remainder is source_wait. Source figures longer than the round
// trip they sit in (a hostile or confused source) are cut to it.
FaultPhaseDurations splitFaultPhases(const ReplyMoments& at, const SourceDurations& source,
                                     std::chrono::microseconds min_rtt);

class FaultPhaseTimer {
 public:
  explicit FaultPhaseTimer(TransferRecorder recorder) : recorder_(recorder) {}

  // A new urgent link: ServeTimes of replies read on the old one will not come.
  void linkOpened();
  // A fault's page arrived in a demand reply and its vCPUs are woken.
  void replied(PageIndex page, const ReplyMoments& at);
  // The source's ServeTimes for a page: records the phases if that page's reply was timed
  // (a page answered by the bulk stream first has none). `path` is the urgent link's.
  void serveTimes(const transport::ServeTimes& times, std::optional<transport::TcpPath> path);
  std::size_t awaiting() const { return awaiting_.size(); }

 private:
  // Replies kept for a source not known to send ServeTimes (a protocol 1.1 source sends
  // none), and for one that does (they come one frame after the reply: a handful at most).
  static constexpr std::size_t kUnconfirmedLimit = 64;
  static constexpr std::size_t kConfirmedLimit = 4096;

  TransferRecorder recorder_;
  std::unordered_map<std::uint64_t, ReplyMoments> awaiting_;
  bool source_sends_ = false;  // a ServeTimes came on this link
};

// The status's fault_phases_us: how many faults were timed, and per phase (and for their
// whole latency, and for the part of source_wait the source saw) the median, 99th percentile
// and mean in microseconds. The phases' means add up to the total's. `slowest`: the slowest
// timed faults (SlowestFaults::kKept), slowest first, each phase by phase.
nlohmann::json faultPhasesJson(const MigrationStats& stats);

}  // namespace lazymig::agent
