// The bufferevent-backed Connection; private to transport/.
#pragma once

#include <memory>
#include <string>
#include <vector>

#include "loop/libevent_ptr.h"
#include "transport/connection.h"

struct bufferevent;
struct event_base;
struct ssl_st;

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

  // What moveToLoop (connection_move.cc) carries from one loop to the other.
  struct Parts {
    ssl_st* ssl = nullptr;  // a reference of its own (SSL_up_ref)
    int fd = -1;            // a duplicate of the socket (the bufferevent closes its own)
    PeerIdentity peer;
    Limits limits;
    std::vector<std::byte> unread;  // read from the peer, not yet delivered as a frame
  };
  // moveToLoop's first half, on this connection's loop: its events stopped, its TLS session
  // and socket referenced in `out`, outside the bufferevent, which is then freed (and with it,
  // on a later turn of this loop, its own references). `on_freed(arg)` runs once the
  // bufferevent is finalized. This connection is closed afterwards; on an error `out` is
  // untouched and the caller closes the connection.
  Status detach(Parts& out, void (*on_freed)(const void*, std::size_t, void*), void* arg);
  // moveToLoop's second half, on the target loop's thread: the connection again. Takes the
  // session and the socket (closed and freed on an error too).
  static Result<std::unique_ptr<ConnectionImpl>> resume(event_base* base, Parts parts);

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
