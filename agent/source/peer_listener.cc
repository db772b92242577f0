#include "agent/source/peer_listener.h"

#include <cassert>

#include "agent/core/peer_errors.h"
#include "agent/source/source_migration.h"

namespace lazymig::agent {

Result<std::unique_ptr<PeerListener>> PeerListener::start(
    transport::EventLoop& loop, std::shared_ptr<transport::TlsContext> tls, Options options,
    FindSource find, FindFinished finished, metrics::AgentMetrics* metrics) {
  std::unique_ptr<PeerListener> out(
      new PeerListener(loop, std::move(options), std::move(find), std::move(finished), metrics));
  transport::Server::Options opts;
  opts.address = out->options_.address;
  opts.on_connection = [l = out.get()](std::unique_ptr<transport::Connection> c) {
    l->accepted(std::move(c));
  };
  opts.on_refused = [l = out.get()](transport::RefusalReason reason, const std::string& detail) {
    l->log_.warn("agent connection refused",
                 {{"reason", transport::refusalReasonName(reason)}, {"detail", detail}});
    l->countRefusal(transport::refusalReasonName(reason));
  };
  auto server = transport::Server::listen(loop, std::move(tls), std::move(opts));
  if (!server) return std::unexpected(server.error());
  out->server_ = std::move(*server);
  return out;
}

void PeerListener::countRefusal(std::string_view reason) const {
  if (metrics_) metrics_->addRefusal(reason);
}

void PeerListener::stop() {
  assert(loop_.inLoopThread());
  for (auto& [ptr, p] : pending_) {
    p.hello_timer.cancel();
    p.conn->close();
  }
  pending_.clear();
  server_.reset();
}

void PeerListener::forget(transport::Connection* conn) {
  auto it = pending_.find(conn);
  if (it == pending_.end()) return;
  pending_.erase(it);  // its Timer cancels the Hello wait
}

void PeerListener::accepted(std::unique_ptr<transport::Connection> conn) {
  assert(loop_.inLoopThread());
  transport::Connection* raw = conn.get();
  conn->setHandlers({
      .on_frame = [this, raw](const transport::FrameHeader& h,
                              std::span<const std::byte> p) { onFirstFrame(raw, h, p); },
      .on_closed = [this, raw](const Error&) { forget(raw); },
      .on_drained = nullptr,
  });
  // The timer is cancelled whenever the connection leaves pending_, so `raw` is still ours
  // when it fires.
  auto timer = loop_.schedule(options_.hello_timeout, [this, raw] {
    auto it = pending_.find(raw);
    if (it == pending_.end()) return;
    refuse(raw, static_cast<std::uint16_t>(PeerErrorCode::kBadRequest),
           "no Hello within " + std::to_string(options_.hello_timeout.count()) + " ms",
           "hello_timeout");
  });
  pending_.emplace(raw, Pending{std::move(conn), std::move(timer)});
}

void PeerListener::refuse(transport::Connection* conn, std::uint16_t code,
                          const std::string& message, const std::string& reason) {
  log_.warn("agent connection refused", {{"reason", reason},
                                         {"detail", message},
                                         {"remote", conn->remoteAddress()},
                                         {"peer", conn->peer().describe()}});
  countRefusal(reason);
  conn->sendEncoded(transport::encodeError({code, message}));
  conn->close();
  loop_.post([this, conn] { forget(conn); });
}

void PeerListener::onFirstFrame(transport::Connection* conn, const transport::FrameHeader& h,
                                std::span<const std::byte> payload) {
  assert(loop_.inLoopThread());
  if (auto it = pending_.find(conn); it != pending_.end()) {
    it->second.hello_timer.cancel();  // it spoke in time, whatever it said
  }
  if (h.type != transport::FrameType::kHello) {
    return refuse(conn, static_cast<std::uint16_t>(PeerErrorCode::kBadRequest),
                  "the first frame must be Hello", "protocol");
  }
  auto hello = transport::decodeHello(payload);
  if (!hello) {
    return refuse(conn, static_cast<std::uint16_t>(PeerErrorCode::kBadRequest),
                  hello.error().message(), "protocol");
  }
  auto migration = find_(hello->migration_id);
  if (!migration && finished_) {
    if (auto finished = finished_(hello->migration_id)) {
      // Final, not "not yet": its destination learns the outcome it may have missed (the
      // ending handshake: CompleteAck for a completed one), anyone else is not authorised.
      auto refused = answerFinishedSource(*conn, *hello, *finished,
                                          log_.with({{"migration", hello->migration_id}}));
      if (refused) countRefusal(helloRefusalName(refused->reason));
      loop_.post([this, conn] { forget(conn); });
      return;
    }
  }
  if (!migration) {
    // Retryable on purpose: the orchestrator may create the destination first. A peer with
    // a fleet certificate learns only whether the id exists; nothing more without the token.
    return refuse(conn, static_cast<std::uint16_t>(PeerErrorCode::kUnknownMigration),
                  "no such migration here (yet)", "unknown_migration");
  }
  // Hand the connection over after this callback returns: the migration replaces its
  // handlers, which must not happen while one of them runs. It counts its own refusals.
  loop_.post([this, conn, migration, h = *hello] {
    auto it = pending_.find(conn);
    if (it == pending_.end()) return;
    auto owned = std::move(it->second.conn);
    forget(conn);
    migration->attach(std::move(owned), h);
  });
}

}  // namespace lazymig::agent
