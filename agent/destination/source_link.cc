#include "agent/destination/source_link.h"

#include <algorithm>
#include <cassert>

#include "agent/core/peer_errors.h"

namespace lazymig::agent {

using transport::FrameType;

SourceLink::SourceLink(transport::EventLoop& loop, std::shared_ptr<transport::TlsContext> tls,
                       SourceLinkParams params, Handlers handlers, const log::Logger& logger)
    : loop_(loop),
      tls_(std::move(tls)),
      params_(std::move(params)),
      handlers_(std::move(handlers)),
      log_(logger.with(
          {{"channel", params_.kind == transport::ChannelKind::kUrgent ? "urgent" : "bulk"}})) {}

SourceLink::~SourceLink() { stop(); }

void SourceLink::start() {
  assert(loop_.inLoopThread());
  down_since_ = std::chrono::steady_clock::now();
  attempt();
}

void SourceLink::stop() {
  if (stopped_) return;
  assert(loop_.inLoopThread());
  stopped_ = true;
  *alive_ = false;
  retry_timer_.cancel();
  stall_timer_.cancel();
  linger_timer_.cancel();
  if (conn_) conn_->close();
  conn_.reset();
  open_ = false;
}

void SourceLink::finish(std::chrono::milliseconds linger) {
  assert(loop_.inLoopThread());
  if (stopped_ || finishing_) return;
  if (!conn_) return stop();
  finishing_ = true;
  stall_timer_.cancel();
  linger_timer_ = loop_.schedule(linger, [this] { stop(); });
}

bool SourceLink::send(std::string_view frame) {
  assert(loop_.inLoopThread());
  if (!open_ || !conn_) return false;
  conn_->sendEncoded(frame);
  return true;
}

void SourceLink::expectLayout(std::uint32_t page_size, std::uint64_t memory_bytes) {
  assert(loop_.inLoopThread());
  params_.page_size = page_size;
  params_.memory_bytes = memory_bytes;
}

std::size_t SourceLink::pendingOutputBytes() const {
  return conn_ ? conn_->pendingOutputBytes() : 0;
}

std::optional<transport::TcpPath> SourceLink::tcpPath() const {
  return open_ && conn_ ? conn_->tcpPath() : std::nullopt;
}

void SourceLink::attempt() {
  if (stopped_) return;
  transport::ConnectOptions opts;
  opts.address = params_.source_address;
  opts.timeout = params_.connect_timeout;
  opts.expected_peer = params_.expected_peer;
  std::weak_ptr<bool> alive = alive_;
  transport::connect(loop_, tls_, opts,
                     [this, alive](Result<std::unique_ptr<transport::Connection>> conn) {
                       if (alive.expired() || !*alive.lock()) return;
                       onConnected(std::move(conn));
                     });
}

void SourceLink::onConnected(Result<std::unique_ptr<transport::Connection>> conn) {
  if (!conn) {
    // A source that presents the wrong identity will not become the right one: give up.
    linkDown(conn.error(), conn.error().code == Errc::kAuth);
    return;
  }
  conn_ = std::move(*conn);
  conn_->setPriority(params_.kind == transport::ChannelKind::kUrgent ? 0 : 1);
  conn_->setHandlers({
      .on_frame = [this](const transport::FrameHeader& h,
                         std::span<const std::byte> p) { onFrame(h, p); },
      .on_closed = [this](const Error& e) { linkDown(e, false); },
      .on_drained = nullptr,
  });
  transport::Hello hello{params_.migration_id, params_.token, params_.kind, params_.page_size,
                         params_.memory_bytes};
  conn_->sendEncoded(transport::encodeHello(hello));
  // A source waiting for its memory holds the Hello unanswered; one that never answers (a
  // half-open link) must not hold this channel forever. Connecting again costs one TLS
  // handshake per stall_timeout, so the retry starts from the shortest backoff.
  stall_timer_ = loop_.schedule(params_.stall_timeout, [this] {
    if (open_ || stopped_) return;
    backoff_ = std::chrono::milliseconds(0);
    linkDown(Error::make(Errc::kTimeout, "hello",
                         "no HelloOk from the source within " +
                             std::to_string(params_.stall_timeout.count()) + " ms"),
             false);
  });
}

void SourceLink::onFrame(const transport::FrameHeader& h, std::span<const std::byte> payload) {
  last_rx_ = std::chrono::steady_clock::now();
  if (finishing_) return;  // replies to requests the bulk stream answered first
  if (!open_) {
    if (h.type == FrameType::kHelloOk) {
      auto ok = transport::decodeHelloOk(payload);
      if (!ok) return linkDown(ok.error(), false);
      const bool layout_known = params_.page_size != 0 || params_.memory_bytes != 0;
      if (layout_known &&
          (ok->page_size != params_.page_size || ok->memory_bytes != params_.memory_bytes)) {
        return linkDown(
            Error::make(Errc::kProtocol, "hello",
                        "the source serves " + std::to_string(ok->memory_bytes) +
                            " bytes in pages of " + std::to_string(ok->page_size) +
                            ", the VMM described " + std::to_string(params_.memory_bytes) +
                            " in pages of " + std::to_string(params_.page_size)),
            true);
      }
      source_page_size_ = ok->page_size;
      source_memory_bytes_ = ok->memory_bytes;
      open_ = true;
      backoff_ = std::chrono::milliseconds(0);
      scheduleStallCheck();
      log_.info("channel open", {{"source", params_.source_address}});
      if (handlers_.on_open) handlers_.on_open();
      return;
    }
    if (h.type == FrameType::kCompleteAck) {
      // A source that has finished this migration answers the Hello with the outcome: the
      // acknowledgement a completing destination is waiting for (docs/protocol.md).
      return handlers_.on_frame(h, payload);
    }
    if (h.type == FrameType::kError) {
      auto e = transport::decodeError(payload);
      std::string msg = e ? e->message : "unreadable error frame";
      auto code = e ? static_cast<PeerErrorCode>(e->code) : PeerErrorCode::kInternal;
      return linkDown(Error::make(Errc::kAuth, "source refused the channel", msg),
                      isFatalPeerError(code));
    }
    return linkDown(Error::make(Errc::kProtocol, "hello",
                                std::string("expected HelloOk, got ") +
                                    std::string(transport::frameTypeName(h.type))),
                    false);
  }
  if (h.type == FrameType::kPong) return;
  handlers_.on_frame(h, payload);
}

void SourceLink::scheduleStallCheck() {
  auto period = std::max(params_.stall_timeout / 3, std::chrono::milliseconds(10));
  stall_timer_ = loop_.schedule(period, [this] {
    if (!open_ || stopped_) return;
    auto silent = std::chrono::steady_clock::now() - last_rx_;
    if (silent >= params_.stall_timeout) {
      auto ms = std::chrono::duration_cast<std::chrono::milliseconds>(silent).count();
      return linkDown(Error::make(Errc::kTimeout, "link stalled",
                                  "nothing received for " + std::to_string(ms) + " ms"),
                      false);
    }
    conn_->sendEncoded(transport::encodePing(FrameType::kPing, {++ping_nonce_}));
    scheduleStallCheck();
  });
}

void SourceLink::linkDown(const Error& why, bool fatal) {
  if (finishing_) return stop();  // the source closed after our last frame, as it should
  bool was_open = open_;
  open_ = false;
  stall_timer_.cancel();
  if (conn_) {
    conn_->close();
    // Dropping the connection here is safe: the transport allows it from its own handlers.
    conn_.reset();
  }
  if (stopped_) return;
  if (was_open) {
    down_since_ = std::chrono::steady_clock::now();
    log_.warn("link to source lost", {{"error", why.message()}});
    if (handlers_.on_down) handlers_.on_down(why);
  }
  if (fatal || std::chrono::steady_clock::now() - down_since_ >= params_.give_up_after) {
    log_.error("giving up on the source", {{"error", why.message()}});
    stopped_ = true;
    if (handlers_.on_give_up) handlers_.on_give_up(why);
    return;
  }
  log_.debug("connect failed, will retry", {{"error", why.message()}});
  scheduleRetry();
}

void SourceLink::scheduleRetry() {
  backoff_ =
      backoff_.count() == 0 ? params_.initial_backoff : std::min(backoff_ * 2, params_.max_backoff);
  // +-20% jitter keeps a fleet of destinations from reconnecting in lockstep.
  std::uniform_real_distribution<double> jitter(0.8, 1.2);
  auto delay = std::chrono::milliseconds(
      static_cast<std::int64_t>(static_cast<double>(backoff_.count()) * jitter(rng_)));
  ++reconnects_;
  retry_timer_ = loop_.schedule(delay, [this] { attempt(); });
}

}  // namespace lazymig::agent
