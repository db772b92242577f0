// The bufferevent-backed Connection; private to transport/.
#pragma once

#include <memory>
#include <string>

#include "loop/libevent_ptr.h"
#include "transport/connection.h"

struct bufferevent;
struct event_base;

namespace lazymig::transport {

class ConnectionImpl final : public Connection {
 public:
  ConnectionImpl(bufferevent* bev, PeerIdentity peer, Limits limits);
  ~ConnectionImpl() override;

  void setHandlers(Handlers handlers) override;
  void sendEncoded(std::string_view frame) override;
  void sendWithBody(std::span<const std::byte> prefix, std::span<const std::byte> body,
                    std::shared_ptr<const void> owner) override;
  std::size_t pendingOutputBytes() const override;
  void setLowWatermark(std::size_t bytes) override;
  void setPriority(int priority) override;
  const PeerIdentity& peer() const override { return peer_; }
  std::string remoteAddress() const override { return remote_; }
  std::optional<TcpPath> tcpPath() const override;
  void close() override;

 private:
  static void onRead(bufferevent* bev, void* arg);
  static void onWrite(bufferevent* bev, void* arg);
  static void onEvent(bufferevent* bev, short what, void* arg);
  void readFrames();
  void fail(const Error& e);

  loop::BufferEventPtr bev_;
  PeerIdentity peer_;
  Limits limits_;
  // Shared so that a handler that destroys this connection (or replaces the handlers) is not
  // itself destroyed while it runs: every call holds a reference.
  std::shared_ptr<Handlers> handlers_ = std::make_shared<Handlers>();
  std::string remote_;
  std::size_t low_watermark_ = 0;
  // False once closed or destroyed; read loops and callers check it after every handler.
  std::shared_ptr<bool> alive_ = std::make_shared<bool>(true);
};

std::string addressOf(int fd);
void setNoDelay(int fd);
std::string bevError(bufferevent* bev, short what);
// Frees the closed connections of `base` still lingering for their peer; for a stopped loop.
void freeLingeringConnections(event_base* base);

}  // namespace lazymig::transport
