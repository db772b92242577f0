#include "agent/source/precopy_source.h"

#include <cassert>

namespace lazymig::agent {

namespace {
// Rounds kept in the status: the first ones say how pre-copy converged, the last ones what the
// guest writes while the orchestrator has not paused it yet.
constexpr std::size_t kRoundsShown = 200;

std::string_view stateName(PrecopySource::State s) {
  switch (s) {
    case PrecopySource::State::kWaitingForDestination:
      return "waiting_for_destination";
    case PrecopySource::State::kRounds:
      return "rounds";
    case PrecopySource::State::kReadyToPause:
      return "ready_to_pause";
    case PrecopySource::State::kSwitched:
      return "switched";
  }
  return "unknown";
}

double millis(std::chrono::nanoseconds d) {
  return std::chrono::duration<double, std::milli>(d).count();
}
}  // namespace

PrecopySource::PrecopySource(transport::EventLoop& peer_loop, std::optional<PrecopyRounds> rounds,
                             std::uint64_t page_count, std::string why)
    : peer_loop_(peer_loop),
      rounds_(std::move(rounds)),
      page_count_(page_count),
      to_send_(page_count, true),
      sent_once_(page_count),
      stale_(page_count),
      hot_(page_count),
      resent_(page_count),
      written_last_(page_count),
      written_before_(page_count),
      tracking_error_(std::move(why)) {
  if (!rounds_) {
    state_ = State::kReadyToPause;
    state_name_ = std::string(stateName(state_));
    switch_reason_ = "no_write_tracking";
  }
}

std::unique_ptr<PrecopySource> PrecopySource::switchedFromTheStart(transport::EventLoop& peer_loop,
                                                                   std::uint64_t page_count) {
  auto out = std::make_unique<PrecopySource>(peer_loop, std::nullopt, page_count);
  out->state_ = State::kSwitched;
  out->state_name_ = std::string(stateName(out->state_));
  out->switch_reason_ = "paused_memory";
  return out;
}

std::unique_ptr<PrecopySource> PrecopySource::restarted(transport::EventLoop& peer_loop,
                                                        std::uint64_t page_count, bool switched) {
  auto out = std::make_unique<PrecopySource>(
      peer_loop, std::nullopt, page_count,
      "the agent restarted: the write tracking stayed with the agent before it");
  out->vouch_nothing_ = true;
  if (switched) {
    out->state_ = State::kSwitched;
    out->state_name_ = std::string(stateName(out->state_));
  }
  return out;
}

void PrecopySource::resumed(const Bitmap& has) {
  assert(peer_loop_.inLoopThread());
  if (switched()) return;
  // Pages the destination lacks go again; pages it has may be older than ours (we cannot tell
  // whose copy it is), so they count as sent and stay to send when they were.
  // A page resent on the channel before this one may be staged in its older copy (the newer
  // one lost with the link): it goes again.
  for (std::size_t w = 0; w < has.words().size(); ++w) {
    to_send_.mutableWords()[w] |=
        (~has.words()[w] | resent_.words()[w]) & Bitmap::validMask(page_count_, w);
    sent_once_.mutableWords()[w] |= has.words()[w];
  }
  resent_ = Bitmap(page_count_);
  cursor_ = 0;
  if (state_ == State::kWaitingForDestination) {
    std::lock_guard lock(status_mu_);
    state_ = State::kRounds;
    state_name_ = std::string(stateName(state_));
  }
}

void PrecopySource::trackingLost(const Error& e) {
  // The scan may have protected pages it did not report: nothing sent can be vouched for.
  rounds_.reset();
  to_send_.setAll();
  std::lock_guard lock(status_mu_);
  tracking_error_ = e.message();
  if (switch_reason_.empty()) switch_reason_ = "tracking_failed";
  state_ = State::kReadyToPause;
  state_name_ = std::string(stateName(state_));
}

void PrecopySource::addWritten(const std::vector<GuestPageRun>& runs, Bitmap* also) {
  for (const auto& run : runs) {
    for (std::uint64_t p = run.first; p < run.first + run.count && p < page_count_; ++p) {
      to_send_.set(p);
      if (also) also->set(p);
    }
  }
}

bool PrecopySource::beginRound(Clock::time_point now) {
  if (!rounds_) return false;
  auto written = rounds_->beginRound();
  if (!written) {
    trackingLost(written.error());
    return false;
  }
  const bool first = rounds_->rounds().size() == 1;
  written_before_ = std::move(written_last_);
  written_last_ = Bitmap(page_count_);
  // Round 1's "every page" says nothing about the guest's writes: it is not its hot set.
  addWritten(*written, first ? nullptr : &written_last_);
  RoundStatus round;
  round.number = rounds_->rounds().back().number;
  round.pages_written = rounds_->rounds().back().pages;
  if (!first) {
    const double seconds = std::chrono::duration<double>(now - last_scan_).count();
    round.dirty_pages_per_s = seconds > 0 ? static_cast<double>(round.pages_written) / seconds : 0;
  }
  last_scan_ = now;
  cursor_ = 0;
  in_round_ = true;
  std::lock_guard lock(status_mu_);
  round_status_.push_back(round);
  if (round_status_.size() > kRoundsShown) {
    round_status_.erase(round_status_.begin() + kRoundsShown / 2);
  }
  return true;
}

void PrecopySource::endRound(Clock::time_point now) {
  in_round_ = false;
  round_ended_ = now;
  auto reason = rounds_->endRound();
  const PrecopyRound& ended = rounds_->rounds().back();
  std::lock_guard lock(status_mu_);
  RoundStatus& round = round_status_.back();
  round.duration_ms = millis(ended.duration);
  if (recorder_) {
    // Round 1's pages are every page, not what the guest wrote: it has no dirty rate.
    recorder_->precopyRound(
        round.pages_sent, ended.duration,
        ended.number > 1 ? std::optional(round.dirty_pages_per_s) : std::nullopt);
  }
  if (reason && state_ == State::kRounds) {
    state_ = State::kReadyToPause;
    state_name_ = std::string(stateName(state_));
    switch_reason_ = std::string(switchReasonName(*reason));
    ready_after_round_ = ended.number;
  }
}

PrecopySource::Next PrecopySource::next(std::uint64_t max_pages, Clock::time_point now) {
  assert(peer_loop_.inLoopThread());
  if (switched() || state_ == State::kWaitingForDestination) return {};
  if (!in_round_) {
    // Waiting for the pause: another round keeps the stale set small, but not in a busy loop.
    if (state_ == State::kReadyToPause && now < round_ended_ + kIdleRound) {
      return {std::nullopt, round_ended_ + kIdleRound};
    }
    // Without write tracking nothing more is sent before the pause.
    if (!beginRound(now)) return {std::nullopt, Clock::time_point::max()};
  }
  std::uint64_t first = to_send_.findNextSet(cursor_);
  if (first >= page_count_) {
    endRound(now);
    // The next round begins on the next call (now, or kIdleRound later).
    return {std::nullopt, state_ == State::kRounds ? now : now + kIdleRound};
  }
  std::uint64_t end = first;
  while (end < page_count_ && end - first < max_pages && to_send_.test(end)) {
    to_send_.clear(end);
    if (sent_once_.test(end)) resent_.set(end);
    sent_once_.set(end);
    ++end;
  }
  cursor_ = end;
  {
    std::lock_guard lock(status_mu_);
    round_status_.back().pages_sent += end - first;
  }
  return {PageRun{first, end - first}, now};
}

const Bitmap& PrecopySource::pause() {
  assert(peer_loop_.inLoopThread());
  Bitmap final_scan(page_count_);
  if (rounds_) {
    if (auto written = rounds_->stalePagesAfterPause()) {
      addWritten(*written, &final_scan);
    } else {
      trackingLost(written.error());
    }
  }
  // Stale: what the destination may hold a copy of that is not current.
  stale_ = to_send_;
  stale_.intersect(sent_once_);
  hot_ = stale_;
  hot_.merge(written_last_);
  hot_.merge(written_before_);
  hot_.merge(final_scan);
  std::lock_guard lock(status_mu_);
  state_ = State::kSwitched;
  state_name_ = std::string(stateName(state_));
  stale_pages_ = stale_.count();
  hot_pages_ = hot_.count();
  if (recorder_) {
    recorder_->precopySourceSwitch(
        switch_reason_.empty() ? std::string_view("paused_before_ready") : switch_reason_,
        stale_pages_);
  }
  return stale_;
}

Bitmap PrecopySource::resumedAfterSwitch(const Bitmap& has) {
  assert(peer_loop_.inLoopThread());
  // StalePages drops staged copies only: pages installed after the switch stay installed (a
  // destination that heard `last` on the lost channel heard every page sent before it).
  Bitmap also_stale = vouch_nothing_ ? has : resent_;
  resent_ = Bitmap(page_count_);
  also_stale.intersect(has);
  if (also_stale.count() > 0) {
    stale_.merge(also_stale);
    hot_.merge(also_stale);
    std::lock_guard lock(status_mu_);
    stale_pages_ = stale_.count();
    hot_pages_ = hot_.count();
  }
  Bitmap out = has;
  out.subtract(stale_);
  return out;
}

Bitmap PrecopySource::currentNow() const {
  Bitmap out(page_count_);
  for (std::size_t w = 0; w < out.words().size(); ++w) {
    out.mutableWords()[w] =
        sent_once_.words()[w] & ~to_send_.words()[w] & Bitmap::validMask(page_count_, w);
  }
  return out;
}

nlohmann::json PrecopySource::status() const {
  std::lock_guard lock(status_mu_);
  nlohmann::json rounds = nlohmann::json::array();
  for (const auto& r : round_status_) {
    rounds.push_back({{"round", r.number},
                      {"pages_written", r.pages_written},
                      {"pages_sent", r.pages_sent},
                      {"duration_ms", r.duration_ms},
                      {"dirty_pages_per_s", r.dirty_pages_per_s}});
  }
  nlohmann::json out{{"state", state_name_},
                     {"round", round_status_.empty() ? 0u : round_status_.back().number},
                     {"rounds", rounds}};
  if (!switch_reason_.empty()) out["switch_reason"] = switch_reason_;
  if (ready_after_round_ > 0) out["ready_after_round"] = ready_after_round_;
  if (!tracking_error_.empty()) out["tracking_error"] = tracking_error_;
  if (state_name_ == "switched") {
    out["stale_pages"] = stale_pages_;
    out["hot_pages"] = hot_pages_;
  }
  return out;
}

}  // namespace lazymig::agent
