// The agent's TLS listener for other agents: every connection must open with a Hello that
// names a migration this agent serves; it is then handed to that migration, which checks
// the peer's identity and token. Lives on the peer loop.
#pragma once

#include <functional>
#include <map>
#include <memory>

#include "agent/source_ending.h"
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
  // Call on the peer loop's thread.
  static Result<std::unique_ptr<PeerListener>> start(transport::EventLoop& loop,
                                                     std::shared_ptr<transport::TlsContext> tls,
                                                     const std::string& address, FindSource find,
                                                     FindFinished find_finished,
                                                     metrics::AgentMetrics* metrics);
  std::uint16_t port() const { return server_->port(); }
  void stop();  // peer loop

 private:
  PeerListener(transport::EventLoop& loop, FindSource find, FindFinished find_finished,
               metrics::AgentMetrics* metrics)
      : loop_(loop),
        find_(std::move(find)),
        find_finished_(std::move(find_finished)),
        metrics_(metrics) {}
  void accepted(std::unique_ptr<transport::Connection> conn);
  void onFirstFrame(transport::Connection* conn, const transport::FrameHeader& h,
                    std::span<const std::byte> payload);
  void refuse(transport::Connection* conn, std::uint16_t code, const std::string& message,
              const std::string& reason);

  transport::EventLoop& loop_;
  FindSource find_;
  FindFinished find_finished_;
  metrics::AgentMetrics* metrics_;
  std::unique_ptr<transport::Server> server_;
  std::map<transport::Connection*, std::unique_ptr<transport::Connection>> pending_;
  log::Logger log_ = log::root().with({{"component", "peer_listener"}});
};

}  // namespace lazymig::agent
