// Authorised channels that said Hello before the guest memory was handed over, one per kind.
// Answering them the moment it arrives spares the destination's first faults a reconnect
// backoff (up to seconds) when the orchestrator resumes the VM while the handover runs.
//
// Every method runs on the peer loop (asserted in debug builds), but close() (see there).
#pragma once

#include <memory>
#include <optional>
#include <vector>

#include "base/log.h"
#include "transport/connection.h"

namespace lazymig::agent {

class ParkedChannels {
 public:
  struct Channel {
    std::unique_ptr<transport::Connection> conn;
    transport::Hello hello;
  };

  ParkedChannels(transport::EventLoop& peer_loop, log::Logger log)
      : peer_loop_(peer_loop), log_(std::move(log)) {}

  // Peer loop. Waits with `conn` until take(); a second channel of the same kind replaces the
  // first (the destination gave up on it and connected again). A channel that closes or
  // sends anything before HelloOk just stops waiting.
  void park(std::unique_ptr<transport::Connection> conn, const transport::Hello& hello);
  // Peer loop: every waiting channel, urgent first; none wait afterwards.
  std::vector<Channel> take();
  // Closes every waiting channel. Peer loop, or any thread once the peer loop has stopped
  // (the agent's shutdown).
  void close();

 private:
  std::optional<Channel>& slot(transport::ChannelKind kind);

  transport::EventLoop& peer_loop_;
  log::Logger log_;
  std::optional<Channel> urgent_;
  std::optional<Channel> bulk_;
};

}  // namespace lazymig::agent
