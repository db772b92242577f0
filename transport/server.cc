// The TLS listener and the outgoing connect().
#include <event2/buffer.h>
#include <event2/bufferevent.h>
#include <event2/bufferevent_ssl.h>
#include <event2/event.h>
#include <event2/listener.h>
#include <netdb.h>
#include <netinet/in.h>
#include <openssl/err.h>
#include <openssl/ssl.h>
#include <sys/socket.h>
#include <unistd.h>

#include <cstring>
#include <map>

#include "loop/libevent_ptr.h"
#include "transport/connection_impl.h"
#include "transport/tls_internal.h"

namespace lazymig::transport {

class ServerImpl;

namespace {

Result<std::pair<std::string, std::string>> splitAddress(const std::string& address) {
  auto colon = address.rfind(':');
  if (colon == std::string::npos || colon + 1 == address.size()) {
    return fail(Errc::kInvalidArgument, "address", "'" + address + "' is not host:port");
  }
  std::string host = address.substr(0, colon);
  if (host.size() >= 2 && host.front() == '[' && host.back() == ']')
    host = host.substr(1, host.size() - 2);
  return std::make_pair(host, address.substr(colon + 1));
}

Result<sockaddr_storage> resolve(const std::string& address, socklen_t& len) {
  auto parts = splitAddress(address);
  if (!parts) return std::unexpected(parts.error());
  addrinfo hints{};
  hints.ai_socktype = SOCK_STREAM;
  hints.ai_flags = AI_NUMERICSERV;
  addrinfo* res = nullptr;
  int rc = getaddrinfo(parts->first.empty() ? nullptr : parts->first.c_str(), parts->second.c_str(),
                       &hints, &res);
  if (rc != 0) return fail(Errc::kInvalidArgument, "resolve", address + ": " + gai_strerror(rc));
  sockaddr_storage ss{};
  std::memcpy(&ss, res->ai_addr, res->ai_addrlen);
  len = res->ai_addrlen;
  freeaddrinfo(res);
  return ss;
}

// One accepted socket on its way to becoming a Connection: first a peek for plaintext, then
// the TLS handshake, bounded by the handshake timeout. It owns the socket: by itself until the
// handshake starts, then through the bufferevent (BEV_OPT_CLOSE_ON_FREE).
struct PendingAccept {
  PendingAccept(ServerImpl* s, evutil_socket_t f) : server(s), fd(f) {}
  PendingAccept(const PendingAccept&) = delete;
  PendingAccept& operator=(const PendingAccept&) = delete;
  ~PendingAccept() {
    peek.reset();
    if (!bev && fd >= 0) evutil_closesocket(fd);
  }
  // The connection takes the bufferevent, and with it the socket.
  bufferevent* handOver() {
    fd = -1;
    return bev.release();
  }
  ServerImpl* server;
  evutil_socket_t fd;
  loop::EventPtr peek;
  loop::BufferEventPtr bev;
};

}  // namespace

class ServerImpl final : public Server {
 public:
  ServerImpl(EventLoop& loop, std::shared_ptr<TlsContext> tls, Options options)
      : loop_(loop), tls_(std::move(tls)), options_(std::move(options)) {}

  Status listen() {
    socklen_t len = 0;
    auto ss = resolve(options_.address, len);
    if (!ss) return std::unexpected(ss.error());
    listener_.reset(
        evconnlistener_new_bind(loop_.base(), &ServerImpl::onAccept, this,
                                LEV_OPT_CLOSE_ON_FREE | LEV_OPT_REUSEABLE | LEV_OPT_CLOSE_ON_EXEC,
                                128, reinterpret_cast<sockaddr*>(&*ss), static_cast<int>(len)));
    if (!listener_) return failSys("listen", options_.address);
    sockaddr_storage bound{};
    socklen_t blen = sizeof bound;
    getsockname(evconnlistener_get_fd(listener_.get()), reinterpret_cast<sockaddr*>(&bound), &blen);
    port_ = bound.ss_family == AF_INET6 ? ntohs(reinterpret_cast<sockaddr_in6*>(&bound)->sin6_port)
                                        : ntohs(reinterpret_cast<sockaddr_in*>(&bound)->sin_port);
    return {};
  }

  std::uint16_t port() const override { return port_; }

 private:
  static void onAccept(evconnlistener*, evutil_socket_t fd, sockaddr*, int, void* arg) {
    static_cast<ServerImpl*>(arg)->accepted(fd);
  }

  void accepted(evutil_socket_t fd) {
    evutil_make_socket_nonblocking(fd);
    setNoDelay(fd);
    auto p = std::make_unique<PendingAccept>(this, fd);
    p->peek.reset(event_new(loop_.base(), fd, EV_READ, &ServerImpl::onPeek, p.get()));
    timeval tv = toTimeval(options_.handshake_timeout);
    event_add(p->peek.get(), &tv);
    pending_.emplace(p.get(), std::move(p));
  }

  static timeval toTimeval(std::chrono::milliseconds ms) {
    return timeval{static_cast<time_t>(ms.count() / 1000),
                   static_cast<suseconds_t>((ms.count() % 1000) * 1000)};
  }

  static void onPeek(evutil_socket_t fd, short what, void* arg) {
    auto* p = static_cast<PendingAccept*>(arg);
    ServerImpl* self = p->server;
    p->peek.reset();
    if (what & EV_TIMEOUT)
      return self->refuse(p, RefusalReason::kTlsHandshake, "no data before the handshake timeout");
    unsigned char first = 0;
    ssize_t n = recv(fd, &first, 1, MSG_PEEK);
    if (n <= 0) return self->refuse(p, RefusalReason::kOther, "closed before sending anything");
    // 0x16 is a TLS handshake record; anything else is not TLS at all.
    if (first != 0x16)
      return self->refuse(p, RefusalReason::kPlaintext, "the first byte is not a TLS record");
    SSL* ssl = self->tls_->newSession();
    p->bev.reset(bufferevent_openssl_socket_new(self->loop_.base(), fd, ssl,
                                                BUFFEREVENT_SSL_ACCEPTING, BEV_OPT_CLOSE_ON_FREE));
    timeval tv = toTimeval(self->options_.handshake_timeout);
    bufferevent_set_timeouts(p->bev.get(), &tv, &tv);
    bufferevent_setcb(p->bev.get(), nullptr, nullptr, &ServerImpl::onHandshake, p);
    bufferevent_enable(p->bev.get(), EV_READ);
  }

  static void onHandshake(bufferevent* bev, short what, void* arg) {
    auto* p = static_cast<PendingAccept*>(arg);
    ServerImpl* self = p->server;
    SSL* ssl = bufferevent_openssl_get_ssl(bev);
    if (what & BEV_EVENT_CONNECTED) {
      auto owned = std::move(self->pending_.at(p));
      self->pending_.erase(p);
      auto conn = std::make_unique<ConnectionImpl>(owned->handOver(), identityOf(ssl),
                                                   self->options_.limits);
      if (self->options_.on_connection) self->options_.on_connection(std::move(conn));
      return;
    }
    long verify = SSL_get_verify_result(ssl);
    std::string detail = bevError(bev, what);
    RefusalReason reason = RefusalReason::kTlsHandshake;
    if (verify != X509_V_OK) {
      reason = RefusalReason::kBadCertificate;
      detail = std::string(X509_verify_cert_error_string(verify)) + " (" + detail + ")";
    } else if (detail.find("peer did not return a certificate") != std::string::npos ||
               detail.find("certificate required") != std::string::npos) {
      reason = RefusalReason::kNoCertificate;
    }
    self->refuse(p, reason, detail);
  }

  void refuse(PendingAccept* p, RefusalReason reason, const std::string& detail) {
    auto owned = std::move(pending_.at(p));
    pending_.erase(p);
    std::string remote = addressOf(static_cast<int>(owned->fd));
    owned.reset();
    if (options_.on_refused) options_.on_refused(reason, remote + ": " + detail);
  }

  EventLoop& loop_;
  std::shared_ptr<TlsContext> tls_;
  Options options_;
  // Declared in this order so that the listener goes first: no accept lands in a map being
  // destroyed.
  std::map<PendingAccept*, std::unique_ptr<PendingAccept>> pending_;
  loop::EvConnListenerPtr listener_;
  std::uint16_t port_ = 0;
};

Result<std::unique_ptr<Server>> Server::listen(EventLoop& loop, std::shared_ptr<TlsContext> tls,
                                               Options options) {
  if (tls->side() != TlsContext::Side::kServer) {
    return fail(Errc::kInvalidArgument, "Server::listen", "needs a server-side TLS context");
  }
  auto server = std::make_unique<ServerImpl>(loop, std::move(tls), std::move(options));
  if (auto ok = server->listen(); !ok) return std::unexpected(ok.error());
  return server;
}

namespace {

// An outgoing connection until its TLS handshake ends; it owns the bufferevent until then.
struct ConnectAttempt {
  ConnectOptions options;
  std::function<void(Result<std::unique_ptr<Connection>>)> done;
  loop::BufferEventPtr bev;

  static void onEvent(bufferevent* bev, short what, void* arg) {
    std::unique_ptr<ConnectAttempt> self(static_cast<ConnectAttempt*>(arg));
    if (!(what & BEV_EVENT_CONNECTED)) {
      std::string detail = bevError(bev, what);
      SSL* ssl = bufferevent_openssl_get_ssl(bev);
      long verify = ssl ? SSL_get_verify_result(ssl) : X509_V_OK;
      self->bev.reset();
      Errc code = verify != X509_V_OK ? Errc::kAuth : Errc::kClosed;
      if (verify != X509_V_OK) detail = X509_verify_cert_error_string(verify);
      return self->done(fail(code, "connect " + self->options.address, detail));
    }
    SSL* ssl = bufferevent_openssl_get_ssl(bev);
    PeerIdentity peer = identityOf(ssl);
    if (!peer.matches(self->options.expected_peer)) {
      self->bev.reset();
      return self->done(fail(
          Errc::kAuth, "connect " + self->options.address,
          "the peer presented " + peer.describe() + ", expected " + self->options.expected_peer));
    }
    setNoDelay(static_cast<int>(bufferevent_getfd(bev)));
    self->done(std::make_unique<ConnectionImpl>(self->bev.release(), std::move(peer),
                                                self->options.limits));
  }
};

}  // namespace

void connect(EventLoop& loop, std::shared_ptr<TlsContext> tls, ConnectOptions options,
             std::function<void(Result<std::unique_ptr<Connection>>)> done) {
  auto start = [&loop, tls = std::move(tls), options = std::move(options),
                done = std::move(done)]() mutable {
    socklen_t len = 0;
    auto ss = resolve(options.address, len);
    if (!ss) return done(std::unexpected(ss.error()));
    if (options.expected_peer.empty()) {
      return done(fail(Errc::kInvalidArgument, "connect", "expected_peer is required"));
    }
    SSL* ssl = tls->newSession();
    auto attempt = std::make_unique<ConnectAttempt>(
        ConnectAttempt{std::move(options), std::move(done), nullptr});
    attempt->bev.reset(bufferevent_openssl_socket_new(
        loop.base(), -1, ssl, BUFFEREVENT_SSL_CONNECTING, BEV_OPT_CLOSE_ON_FREE));
    bufferevent* bev = attempt->bev.get();
    auto ms = attempt->options.timeout.count();
    timeval tv{static_cast<time_t>(ms / 1000), static_cast<suseconds_t>((ms % 1000) * 1000)};
    bufferevent_set_timeouts(bev, &tv, &tv);
    bufferevent_setcb(bev, nullptr, nullptr, &ConnectAttempt::onEvent, attempt.get());
    if (bufferevent_socket_connect(bev, reinterpret_cast<sockaddr*>(&*ss), static_cast<int>(len)) !=
        0) {
      std::string err = evutil_socket_error_to_string(EVUTIL_SOCKET_ERROR());
      attempt->bev.reset();
      return attempt->done(fail(Errc::kClosed, "connect " + attempt->options.address, err));
    }
    // onEvent takes it back: the bufferevent calls it exactly once, connected or not.
    (void)attempt.release();
  };
  if (loop.inLoopThread())
    start();
  else
    loop.post(std::move(start));
}

}  // namespace lazymig::transport
