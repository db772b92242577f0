// Framed, mutually authenticated TLS 1.3 connections on libevent bufferevents.
//
// Threading: an EventLoop (loop/event_loop.h) owns one thread and one event_base. Everything
// that touches a Connection, Server or connect() callback runs on that loop's thread; other
// threads hand work over with EventLoop::post(). TlsContext is the exception: every loop makes
// sessions from it while the main thread may reload it (its own mutex).
#pragma once

#include <chrono>
#include <cstdint>
#include <functional>
#include <memory>
#include <mutex>
#include <optional>
#include <span>
#include <string>
#include <vector>

#include "base/error.h"
#include "loop/event_loop.h"
#include "transport/frame.h"
#include "transport/tcp_path.h"

struct event_base;
struct ssl_ctx_st;
struct ssl_st;

namespace lazymig::transport {

// The loop moved to loop/ (its own library); transport keeps the name for its callers.
using loop::EventLoop;
using loop::Timer;

struct TlsFiles {
  std::string ca_file;    // PEM bundle of the CA(s) whose certificates we accept
  std::string cert_file;  // our certificate chain (PEM)
  std::string key_file;   // our private key (PEM)
};

// An SSL_CTX configured for TLS 1.3 only with mandatory peer certificates.
class TlsContext {
 public:
  enum class Side { kServer, kClient };
  static Result<std::shared_ptr<TlsContext>> create(Side side, const TlsFiles& files);
  ~TlsContext();
  TlsContext(const TlsContext&) = delete;
  TlsContext& operator=(const TlsContext&) = delete;
  // A new TLS session for one connection, from the certificates loaded last. The session
  // holds its own reference to them, so a reload never disturbs a connection already made.
  ssl_st* newSession() const;
  // Loads the files again (rotated certificates, a new CA bundle). On any error the
  // certificates in use stay, and the error names the file.
  Status reload(const TlsFiles& files);
  Side side() const { return side_; }

 private:
  TlsContext(ssl_ctx_st* ctx, Side side) : ctx_(ctx), side_(side) {}
  mutable std::mutex mu_;  // guards ctx_ against a reload on another thread
  ssl_ctx_st* ctx_;
  Side side_;
};

// Who the peer proved to be: the subjectAltName entries of its verified certificate.
struct PeerIdentity {
  std::vector<std::string> dns_names;
  std::vector<std::string> uris;  // e.g. spiffe://fleet/node/host-a
  std::string common_name;
  // True when `expected` equals one DNS name or URI exactly (no wildcards).
  bool matches(std::string_view expected) const;
  std::string describe() const;  // for logs and errors
};

class Connection {
 public:
  struct Handlers {
    // A complete frame; the payload view is valid only during the call.
    std::function<void(const FrameHeader&, std::span<const std::byte> payload)> on_frame;
    // The connection failed or the peer closed it. Not called after close().
    std::function<void(const Error&)> on_closed;
    // The output buffer drained to at most the low watermark (see setLowWatermark).
    std::function<void()> on_drained;
  };

  virtual ~Connection() = default;
  virtual void setHandlers(Handlers handlers) = 0;
  // Frames already fully encoded (header included).
  virtual void sendEncoded(std::string_view frame) = 0;
  // A frame as a prefix plus a body that libevent references without copying. The body must
  // stay unchanged while queued; `owner` (e.g. the guest memory's mapping) is held until the
  // bytes are sent or dropped, so that releasing memory never pulls it from under a close
  // that is still flushing. Null when the caller guarantees the body outlives the connection.
  virtual void sendWithBody(std::span<const std::byte> prefix, std::span<const std::byte> body,
                            std::shared_ptr<const void> owner) = 0;
  virtual std::size_t pendingOutputBytes() const = 0;
  virtual void setLowWatermark(std::size_t bytes) = 0;
  // libevent priority of this connection's events (0 is served first).
  virtual void setPriority(int priority) = 0;
  virtual const PeerIdentity& peer() const = 0;
  virtual std::string remoteAddress() const = 0;
  // The kernel's round-trip figures for this connection (TCP_INFO); nullopt once closed.
  virtual std::optional<TcpPath> tcpPath() const = 0;
  // Flushes what is queued (best effort) and closes; no handler runs afterwards.
  virtual void close() = 0;
};

// Why a connection never became a Connection; reported to the server's refusal hook.
enum class RefusalReason { kTlsHandshake, kNoCertificate, kBadCertificate, kPlaintext, kOther };
std::string_view refusalReasonName(RefusalReason reason);

class Server {
 public:
  struct Options {
    std::string address = "127.0.0.1:0";  // host:port; port 0 picks a free port
    Limits limits;
    std::chrono::milliseconds handshake_timeout{10000};
    std::function<void(std::unique_ptr<Connection>)> on_connection;            // loop thread
    std::function<void(RefusalReason, const std::string& detail)> on_refused;  // loop thread
  };
  // Must be called on `loop`'s thread (or before anything else uses the loop).
  static Result<std::unique_ptr<Server>> listen(EventLoop& loop, std::shared_ptr<TlsContext> tls,
                                                Options options);
  virtual ~Server() = default;
  virtual std::uint16_t port() const = 0;
};

struct ConnectOptions {
  std::string address;  // host:port
  Limits limits;
  std::chrono::milliseconds timeout{10000};  // TCP + TLS handshake
  std::string expected_peer;  // the server must present this SAN (DNS name or URI); required
};

// Connects and completes the TLS handshake; `done` runs on the loop thread exactly once.
void connect(EventLoop& loop, std::shared_ptr<TlsContext> tls, ConnectOptions options,
             std::function<void(Result<std::unique_ptr<Connection>>)> done);

// Moves an open connection to `target`'s loop, TLS session, socket and all, without a word on
// the wire: for a channel that must be served on a thread of its own (a source's urgent
// channel, docs/architecture.md). Call on `conn`'s loop thread, outside its handlers, with
// nothing queued to send on it. `done` runs on `target`'s thread with the same connection, its
// events now on `target`, no handlers and the default priority; bytes it had read but not yet
// delivered as a frame are delivered once its new owner has set handlers and returned. If
// `target` has stopped by then, the connection is closed and `done` never runs; if the new
// bufferevent cannot be made, `done` gets the error (the connection is closed).
// An error (Errc::kState, the connection closed): output still queued, or a connection this
// transport did not make.
Status moveToLoop(std::unique_ptr<Connection> conn, EventLoop& target,
                  std::function<void(Result<std::unique_ptr<Connection>>)> done);

}  // namespace lazymig::transport
