// Pre-copy on a live source (docs/precopy.md): what the bulk channel sends while the source VM
// runs, round after round, and the switch once the orchestrator has paused it -- the stale set
// (pages whose copy at the destination may be older than the paused memory) and the pages to
// stream first after it (the stale pages and the guest's hot set).
//
// Its bookkeeping, one bit per page:
//   to_send_   the destination holds no current copy: never sent, reported written by a scan
//              since it was last read, or missing from a reconnecting destination's Resume;
//   sent_once_ the destination may hold some copy (we sent it, or a Resume said so);
//   resent_    sent again on the current bulk channel: if the channel is lost, that copy may
//              have been lost with it while the destination still holds an older one, which its
//              Resume reports like any other.
// A round is one pass over to_send_ after a scan (PrecopyRounds) added what was written: every
// page is read after the scan that reported it, so a later write is reported by a later scan.
// At the pause the stale set is (to_send_ ∪ the final scan) ∩ sent_once_; every other page the
// destination holds is as current as the paused memory. A Resume never vouches for a page (a
// restarted agent cannot tell an older copy from a current one): it only adds to both sets,
// and puts the pages resent on the lost channel back into to_send_ (after the switch: into the
// stale set).
//
// Threads: every method runs on the peer loop (asserted in debug builds), but status(), which
// runs anywhere (the control API).
#pragma once

#include <chrono>
#include <cstdint>
#include <memory>
#include <mutex>
#include <optional>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "agent/core/transfer_recorder.h"
#include "agent/source/bulk_schedule.h"
#include "agent/source/precopy_rounds.h"
#include "base/bitmap.h"
#include "transport/connection.h"

namespace lazymig::agent {

class PrecopySource {
 public:
  using Clock = std::chrono::steady_clock;
  enum class State { kWaitingForDestination, kRounds, kReadyToPause, kSwitched };

  // `rounds`: absent when the write tracking could not be adopted (`why` says why): no round
  // runs, and the switch names every page ever sent as stale.
  PrecopySource(transport::EventLoop& peer_loop, std::optional<PrecopyRounds> rounds,
                std::uint64_t page_count, std::string why = {});

  // The memory is paused already (a snapshot file, one fd handed over) while the spec asked
  // for pre-copy: switched from the start with nothing stale, so that a destination staging
  // what arrives hears `last` at once.
  static std::unique_ptr<PrecopySource> switchedFromTheStart(transport::EventLoop& peer_loop,
                                                             std::uint64_t page_count);

  // A restarted agent's: the write tracking stayed with the dead agent, so no pre-copied page
  // at the destination can be vouched for: every page a Resume names is stale at the switch.
  // `switched`: the dead agent had switched already (the memory is paused).
  static std::unique_ptr<PrecopySource> restarted(transport::EventLoop& peer_loop,
                                                  std::uint64_t page_count, bool switched);

  // Where each ended round and the switch are counted (the agent's Prometheus families). Set
  // before the memory is served, so before any round; without it nothing is counted.
  void recordInto(TransferRecorder recorder) { recorder_ = recorder; }

  // A bulk channel's Resume: the pages the destination holds some copy of.
  void resumed(const Bitmap& has);
  // Before the switch: the next run to send of the current round (marked sent), starting the
  // next round when this one is done. Nothing: no page to send until `retry_at` (the rounds
  // wait for the pause; another round of what is written runs every kIdleRound), or none
  // before the pause (time_point::max(): no write tracking).
  struct Next {
    std::optional<PageRun> run;
    Clock::time_point retry_at{};
  };
  Next next(std::uint64_t max_pages, Clock::time_point now);

  // The orchestrator paused the source VM: the final scan, and the stale set.
  // Returns the stale set; afterwards switched() is true. Call once.
  const Bitmap& pause();
  bool switched() const { return state_ == State::kSwitched; }
  // After the switch, a channel's Resume (`has`): what the destination holds a current copy
  // of, `has` minus the stale pages (a restarted agent: nothing it has is vouched for).
  Bitmap resumedAfterSwitch(const Bitmap& has);
  // After the switch, on the channel that was open at the pause: every page sent and current.
  Bitmap currentNow() const;
  // After the switch: the pages post-copy streams first (stale ∪ written in the last rounds).
  const Bitmap& hotSet() const { return hot_; }
  const Bitmap& stale() const { return stale_; }

  // {state, round, rounds[], switch_reason, ready_after_round, stale_pages, ...} for the
  // migration's status.
  nlohmann::json status() const;

  // A round is begun at most this often once the rounds wait for the pause.
  static constexpr std::chrono::milliseconds kIdleRound{100};

 private:
  bool beginRound(Clock::time_point now);
  void endRound(Clock::time_point now);
  void trackingLost(const Error& e);
  void addWritten(const std::vector<GuestPageRun>& runs, Bitmap* also);

  transport::EventLoop& peer_loop_;
  std::optional<TransferRecorder> recorder_;
  std::optional<PrecopyRounds> rounds_;
  std::uint64_t page_count_;
  State state_ = State::kWaitingForDestination;
  Bitmap to_send_;
  Bitmap sent_once_;
  Bitmap stale_;
  Bitmap hot_;
  Bitmap resent_;
  Bitmap written_last_;    // reported by the latest scan (round 2 on)
  Bitmap written_before_;  // by the scan before it
  std::uint64_t cursor_ = 0;
  bool in_round_ = false;
  bool vouch_nothing_ = false;  // restarted(): a Resume's pages are stale
  Clock::time_point last_scan_{};
  Clock::time_point round_ended_{};

  // What status() reads from other threads.
  struct RoundStatus {
    unsigned number = 0;
    std::uint64_t pages_written = 0;  // the scan's report (round 1: every page)
    std::uint64_t pages_sent = 0;
    double duration_ms = 0;
    double dirty_pages_per_s = 0;  // the scan's report over the time since the scan before
  };
  mutable std::mutex status_mu_;
  std::vector<RoundStatus> round_status_;
  std::string state_name_ = "waiting_for_destination";
  std::string switch_reason_;
  std::string tracking_error_;
  std::uint64_t stale_pages_ = 0;
  std::uint64_t hot_pages_ = 0;
  unsigned ready_after_round_ = 0;  // the round whose end said ready_to_pause (0: none yet)
};

}  // namespace lazymig::agent
