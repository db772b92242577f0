// SourceMigration's urgent channel, on the migration's own urgent loop: the handover from the
// peer loop that accepted it, demand pages (with this side's durations, protocol 1.2), the
// destination's Complete, and the channel's end. The bulk stream stays on the peer loop, so a
// request never waits for a bulk batch being read, encrypted or written.
#include "agent/core/test_points.h"
#include "agent/source/page_frames.h"
#include "agent/source/source_migration.h"
#include "loop/assert_on_loop.h"

namespace lazymig::agent {

using transport::FrameType;

namespace {
constexpr auto kUrgent = metrics::Channel::kUrgent;

// Demand replies queued for a destination that does not read them. A real one has at most a
// few requests per vCPU in flight (kilobytes to a few MiB); past this it is flooding us, and
// the queue would otherwise grow until the agent runs out of memory.
constexpr std::size_t kUrgentBacklogLimit = 64u << 20;

transport::Layout layoutOf(const SourceMemory& memory) {
  return {static_cast<std::uint32_t>(memory.pageSize()), memory.pageCount()};
}
}  // namespace

void SourceMigration::moveUrgent(std::unique_ptr<transport::Connection> conn,
                                 std::string hello_ok) {
  LAZYMIG_ASSERT_ON_LOOP(peer_loop_);
  // The HelloOk goes out from the urgent loop: a connection moves with nothing queued, and the
  // destination sends nothing before it (docs/protocol.md), so nothing is in flight either way.
  auto moved = transport::moveToLoop(
      std::move(conn), *urgent_loop_,
      [this, memory = memory_,
       hello_ok = std::move(hello_ok)](Result<std::unique_ptr<transport::Connection>> c) {
        if (!c) {
          log_.warn("urgent channel lost on its way to its thread; the destination reconnects",
                    {{"error", c.error().message()}});
          return;
        }
        (*c)->sendEncoded(hello_ok);
        attachUrgent(std::move(*c), memory);
      });
  if (!moved) {
    log_.warn("urgent channel could not move to its thread; the destination reconnects",
              {{"error", moved.error().message()}});
  }
}

void SourceMigration::attachUrgent(std::unique_ptr<transport::Connection> conn,
                                   std::shared_ptr<SourceMemory> memory) {
  LAZYMIG_ASSERT_ON_LOOP(*urgent_loop_);
  if (urgent_closed_) {
    log_.info("urgent channel arrived after the teardown; closing it");
    return conn->close();
  }
  if (urgent_) {
    // A reconnect replaces a link this side has not noticed is dead yet.
    log_.info("channel replaced by a new connection");
    urgent_->close();
    held_pages_.clear();
  }
  urgent_ = std::move(conn);
  urgent_memory_ = std::move(memory);
  serve_times_ = false;  // until this connection's destination asks for them
  urgent_->setPriority(0);
  transport::Connection::Handlers handlers;
  handlers.on_frame = [this](const transport::FrameHeader& h, std::span<const std::byte> p) {
    onUrgentFrame(h, p);
  };
  handlers.on_closed = [this](const Error& e) {
    log_.warn("channel closed", {{"channel", "urgent"}, {"error", e.message()}});
    // Dropping the connection from its own close handler is allowed by the transport.
    urgent_.reset();
    held_pages_.clear();
  };
  urgent_->setHandlers(std::move(handlers));
}

void SourceMigration::onUrgentFrame(const transport::FrameHeader& h,
                                    std::span<const std::byte> payload) {
  LAZYMIG_ASSERT_ON_LOOP(*urgent_loop_);
  // When this loop took the frame off the connection: a demand page's wait starts here.
  const auto arrived = std::chrono::steady_clock::now();
  recorder_.wireBytes(kUrgent, metrics::Direction::kReceived,
                      payload.size() + transport::kHeaderSize);
  switch (h.type) {
    case FrameType::kPageRequest: {
      auto req =
          transport::decodePageRequest(payload, layoutOf(*urgent_memory_), transport::Limits{});
      if (!req) break;
      if (urgent_->pendingOutputBytes() > kUrgentBacklogLimit) {
        log_.warn(
            "the peer floods page requests without reading the replies; closing the urgent channel",
            {{"queued_bytes", static_cast<std::uint64_t>(urgent_->pendingOutputBytes())}});
        recorder_.refusal("flood");
        return dropUrgent();
      }
      recorder_.pagesRequested(req->pages.size());
      if (hold_urgent_.load()) return holdRequests(req->pages);
      for (auto page : req->pages) serveDemandPage(page, arrived);
      // After the replies, so that they never wait for it.
      peer_loop_.post([this, pages = std::move(req->pages)] { demandServed(pages); });
      return;
    }
    case FrameType::kComplete: {
      auto c = transport::decodeComplete(payload, layoutOf(*urgent_memory_));
      if (!c) break;
      return completed(c->pages_installed);
    }
    case FrameType::kPing: {
      auto ping = transport::decodePing(payload);
      if (!ping) break;
      if (ping->nonce == transport::kServeTimesWanted) serve_times_ = true;
      return sendFrame(*urgent_, kUrgent, transport::encodePing(FrameType::kPong, *ping),
                       recorder_);
    }
    default:
      break;
  }
  // Anything else from the peer is a protocol error: drop this link (the destination
  // reconnects) and keep the migration and every other one running.
  log_.warn("bad frame on the urgent channel; closing it",
            {{"frame", transport::frameTypeName(h.type)}});
  recorder_.refusal("protocol");
  sendFrame(*urgent_, kUrgent,
            transport::encodeError(
                {static_cast<std::uint16_t>(PeerErrorCode::kBadRequest), "malformed frame"}),
            recorder_);
  dropUrgent();
}

void SourceMigration::serveDemandPage(
    std::uint64_t page, std::optional<std::chrono::steady_clock::time_point> arrived) {
  LAZYMIG_ASSERT_ON_LOOP(*urgent_loop_);
  // Reads guest memory beside the peer loop's bulk batches: SourceMemory's reads are const and
  // the mapping read-only, so the two threads share nothing they write.
  const auto started = std::chrono::steady_clock::now();
  sendPageRun(*urgent_, kUrgent, urgent_memory_, {page, 1}, recorder_);
  if (!arrived || !serve_times_) return;
  const auto ns = [](std::chrono::steady_clock::duration d) {
    return static_cast<std::uint64_t>(std::chrono::nanoseconds(d).count());
  };
  const auto queued = std::chrono::steady_clock::now();
  sendFrame(*urgent_, kUrgent,
            transport::encodeServeTimes({page, ns(started - *arrived), ns(queued - started)}),
            recorder_);
}

void SourceMigration::demandServed(const std::vector<std::uint64_t>& pages) {
  LAZYMIG_ASSERT_ON_LOOP(peer_loop_);
  if (!schedule_) return;
  for (auto page : pages) {
    schedule_->markSent(page);
    schedule_->noteFault(page);
  }
}

void SourceMigration::dropUrgent() {
  LAZYMIG_ASSERT_ON_LOOP(*urgent_loop_);
  urgent_->close();
  urgent_.reset();
  held_pages_.clear();
}

void SourceMigration::closeUrgent() {
  urgent_closed_ = true;
  if (urgent_) urgent_->close();
  urgent_.reset();
  held_pages_.clear();
  urgent_memory_.reset();
}

void SourceMigration::completed(std::uint64_t pages_installed) {
  LAZYMIG_ASSERT_ON_LOOP(*urgent_loop_);
  log_.info("destination confirmed every page installed", {{"pages", pages_installed}});
  testPoint(test_point::kSourceCompleteReceived, log_);
  // Durable before the acknowledgement: once the destination has it, it stops asking, so a
  // source that acknowledged and then lost the record would serve a finished migration
  // forever. A source killed before this line hears the Complete again (docs/protocol.md).
  setState(MigrationState::kCompleted);
  testPoint(test_point::kSourceCompletePersisted, log_);
  if (urgent_) sendFrame(*urgent_, kUrgent, transport::encodeCompleteAck(), recorder_);
  testPoint(test_point::kSourceAckSent, log_);
  // The peer loop closes every channel (this one on this loop, after the callback that
  // delivered Complete has returned; closing flushes the acknowledgement), then lets the
  // memory go.
  peer_loop_.post([this] { releaseMemory(); });
}

}  // namespace lazymig::agent
