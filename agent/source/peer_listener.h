// The agent's TLS listener for other agents: every connection must open with a Hello that
// names a migration this agent serves; it is then handed to that migration, which checks
// the peer's identity and token. Lives on the peer loop: every method but port() runs there
// (asserted in debug builds).
#pragma once

#include <chrono>
#include <functional>
#include <map>
#include <memory>
#include <optional>
#include <string>

#include "agent/source/source_ending.h"
#include "base/log.h"
#include "metrics/metrics.h"
#include "transport/connection.h"

namespace lazymig::agent {

class SourceMigration;

class PeerListener {
 public:
  using FindSource = std::function<std::shared_ptr<SourceMigration>(const std::string& id)>;
  // A source migration that is no longer live (retired, or finished before a restart).
  using FindFinished = std::function<std::optional<FinishedSource>(const std::string& id)>;
  struct Options {
    std::string address;
    // A connection that completed TLS must send its Hello within this, like the TLS handshake
    // itself: a peer with a valid fleet certificate must not hold a connection open unasked.
    std::chrono::milliseconds hello_timeout{10000};
  };
  // Call on the peer loop's thread.
  static Result<std::unique_ptr<PeerListener>> start(transport::EventLoop& loop,
                                                     std::shared_ptr<transport::TlsContext> tls,
                                                     Options options, FindSource find,
                                                     FindFinished finished,
                                                     metrics::AgentMetrics* metrics);
  std::uint16_t port() const { return server_->port(); }
  void stop();  // peer loop

 private:
  PeerListener(transport::EventLoop& loop, Options options, FindSource find, FindFinished finished,
               metrics::AgentMetrics* metrics)
      : loop_(loop),
        options_(std::move(options)),
        find_(std::move(find)),
        finished_(std::move(finished)),
        metrics_(metrics) {}
  void forget(transport::Connection* conn);                    // peer loop
  void accepted(std::unique_ptr<transport::Connection> conn);  // peer loop
  void onFirstFrame(transport::Connection* conn, const transport::FrameHeader& h,
                    std::span<const std::byte> payload);  // peer loop
  void refuse(transport::Connection* conn, std::uint16_t code, const std::string& message,
              const std::string& reason);  // peer loop
  void countRefusal(std::string_view reason) const;

  // A connection waiting for its Hello, and the timer that ends the wait.
  struct Pending {
    std::unique_ptr<transport::Connection> conn;
    transport::Timer hello_timer;
  };

  transport::EventLoop& loop_;
  Options options_;
  FindSource find_;
  FindFinished finished_;
  metrics::AgentMetrics* metrics_;
  std::unique_ptr<transport::Server> server_;
  std::map<transport::Connection*, Pending> pending_;
  log::Logger log_ = log::root().with({{"component", "peer_listener"}});
};

}  // namespace lazymig::agent
