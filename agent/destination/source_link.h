// The destination's link to its source agent, one per channel (urgent or bulk): connects,
// says Hello, and when the link breaks reconnects with capped exponential backoff and jitter
// until the give-up deadline passes. (The source's own side is SourceMigration, in
// agent/source/; this is the other end of the wire.) Lives on one EventLoop; every method
// runs on that loop's thread.
#pragma once

#include <chrono>
#include <cstdint>
#include <functional>
#include <memory>
#include <optional>
#include <random>
#include <string>

#include "base/error.h"
#include "base/log.h"
#include "transport/connection.h"
#include "transport/frame.h"

namespace lazymig::agent {

struct SourceLinkParams {
  std::string migration_id;
  std::string token;
  std::string source_address;
  std::string expected_peer;
  transport::ChannelKind kind = transport::ChannelKind::kUrgent;
  // The guest's layout as the VMM described it. Both 0 (a pre-copy destination's bulk link
  // before its VMM exists, bulk only): "not known yet", the source's HelloOk says it.
  std::uint32_t page_size = 4096;
  std::uint64_t memory_bytes = 0;
  std::chrono::milliseconds initial_backoff{100};
  std::chrono::milliseconds max_backoff{5000};
  std::chrono::milliseconds give_up_after{120000};
  std::chrono::milliseconds connect_timeout{10000};
  // Nothing received for this long on an open channel: the link is declared dead and
  // re-established. Pings every third of it keep an idle link from looking stalled.
  std::chrono::milliseconds stall_timeout{5000};
};

class SourceLink {
 public:
  struct Handlers {
    std::function<void()> on_open;  // HelloOk arrived: the channel carries frames now
    std::function<void(const transport::FrameHeader&, std::span<const std::byte>)> on_frame;
    std::function<void(const Error&)> on_down;     // the link broke; a reconnect is scheduled
    std::function<void(const Error&)> on_give_up;  // no link for give_up_after, or refused for good
  };

  SourceLink(transport::EventLoop& loop, std::shared_ptr<transport::TlsContext> tls,
             SourceLinkParams params, Handlers handlers, const log::Logger& logger);
  // Stops the link (see stop()); on the loop's thread unless already stopped.
  ~SourceLink();

  // The loop's thread only (asserted in debug builds), like every method below.
  void start();
  void stop();
  // The migration is complete and the last frame is sent: keep reading (and dropping) what
  // the source still sends until it closes the link, or `linger` passes, then stop. Closing
  // with unread bytes makes the kernel answer with RST, and an RST makes the source's kernel
  // drop whatever it has not read yet -- the Complete just sent among it.
  void finish(std::chrono::milliseconds linger);
  bool isOpen() const { return open_; }
  // Sends a fully encoded frame; false when the channel is not open.
  bool send(std::string_view frame);
  std::size_t pendingOutputBytes() const;
  // The open connection's TCP round-trip figures (TCP_INFO); nullopt while the link is down.
  std::optional<transport::TcpPath> tcpPath() const;
  std::uint64_t reconnects() const { return reconnects_; }
  // The layout the source's last HelloOk announced (0, 0 before any).
  std::uint32_t sourcePageSize() const { return source_page_size_; }
  std::uint64_t sourceMemoryBytes() const { return source_memory_bytes_; }
  // The VMM has described the guest: Hellos from now on say it, and a HelloOk must match it.
  void expectLayout(std::uint32_t page_size, std::uint64_t memory_bytes);

 private:
  void attempt();
  void onConnected(Result<std::unique_ptr<transport::Connection>> conn);
  void onFrame(const transport::FrameHeader& h, std::span<const std::byte> payload);
  void linkDown(const Error& why, bool fatal);
  void scheduleRetry();
  void scheduleStallCheck();

  transport::EventLoop& loop_;
  std::shared_ptr<transport::TlsContext> tls_;
  SourceLinkParams params_;
  Handlers handlers_;
  log::Logger log_;
  std::unique_ptr<transport::Connection> conn_;
  std::shared_ptr<bool> alive_ = std::make_shared<bool>(true);
  bool open_ = false;
  bool stopped_ = false;
  bool finishing_ = false;
  transport::Timer linger_timer_;
  std::uint64_t reconnects_ = 0;
  std::uint32_t source_page_size_ = 0;
  std::uint64_t source_memory_bytes_ = 0;
  std::chrono::milliseconds backoff_{0};
  std::chrono::steady_clock::time_point down_since_;
  transport::Timer retry_timer_;
  transport::Timer stall_timer_;
  std::uint64_t ping_nonce_ = 0;
  std::chrono::steady_clock::time_point last_rx_;
  std::mt19937_64 rng_{std::random_device{}()};
};

}  // namespace lazymig::agent
