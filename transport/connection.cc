// A framed TLS connection on a libevent OpenSSL bufferevent.
#include <event2/buffer.h>
#include <event2/bufferevent.h>
#include <event2/bufferevent_ssl.h>
#include <event2/event.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <openssl/err.h>
#include <openssl/ssl.h>
#include <sys/socket.h>

#include <array>
#include <map>
#include <mutex>

#include "loop/libevent_ptr.h"
#include "transport/connection_impl.h"
#include "transport/tls_internal.h"

namespace lazymig::transport {

std::string addressOf(int fd) {
  sockaddr_storage ss{};
  socklen_t len = sizeof ss;
  if (getpeername(fd, reinterpret_cast<sockaddr*>(&ss), &len) != 0) return "?";
  char host[64] = {};
  std::uint16_t port = 0;
  if (ss.ss_family == AF_INET) {
    auto* a = reinterpret_cast<sockaddr_in*>(&ss);
    evutil_inet_ntop(AF_INET, &a->sin_addr, host, sizeof host);
    port = ntohs(a->sin_port);
    return std::string(host) + ":" + std::to_string(port);
  }
  auto* a = reinterpret_cast<sockaddr_in6*>(&ss);
  evutil_inet_ntop(AF_INET6, &a->sin6_addr, host, sizeof host);
  return "[" + std::string(host) + "]:" + std::to_string(ntohs(a->sin6_port));
}

void setNoDelay(int fd) {
  int one = 1;
  // Every demand reply is a small write the destination is blocked on: never let Nagle
  // hold it back.
  setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
}

std::string bevError(bufferevent* bev, short what) {
  std::string ssl_errors;
  while (unsigned long e = bufferevent_get_openssl_error(bev)) {
    char buf[256];
    ERR_error_string_n(e, buf, sizeof buf);
    if (!ssl_errors.empty()) ssl_errors += "; ";
    ssl_errors += buf;
  }
  if (what & BEV_EVENT_TIMEOUT) return "timed out";
  if (what & BEV_EVENT_EOF) return ssl_errors.empty() ? "closed by peer" : ssl_errors;
  int err = EVUTIL_SOCKET_ERROR();
  if (!ssl_errors.empty()) return ssl_errors;
  return err != 0 ? evutil_socket_error_to_string(err) : "connection error";
}

ConnectionImpl::ConnectionImpl(bufferevent* bev, PeerIdentity peer, Limits limits)
    : bev_(bev), peer_(std::move(peer)), limits_(limits) {
  remote_ = addressOf(static_cast<int>(bufferevent_getfd(bev_.get())));
  // Larger reads and writes than libevent's 16 KiB default: a bulk frame is 256 KiB.
  bufferevent_set_max_single_read(bev_.get(), 1 << 20);
  bufferevent_set_max_single_write(bev_.get(), 1 << 20);
  bufferevent_setcb(bev_.get(), &ConnectionImpl::onRead, &ConnectionImpl::onWrite,
                    &ConnectionImpl::onEvent, this);
  bufferevent_set_timeouts(bev_.get(), nullptr, nullptr);
  bufferevent_enable(bev_.get(), EV_READ | EV_WRITE);
}

ConnectionImpl::~ConnectionImpl() { close(); }

void ConnectionImpl::setHandlers(Handlers handlers) {
  handlers_ = std::make_shared<Handlers>(std::move(handlers));
}

void ConnectionImpl::sendEncoded(std::string_view frame) {
  if (!bev_) return;
  evbuffer_add(bufferevent_get_output(bev_.get()), frame.data(), frame.size());
}

void ConnectionImpl::sendWithBody(std::span<const std::byte> prefix,
                                  std::span<const std::byte> body,
                                  std::shared_ptr<const void> owner) {
  if (!bev_) return;
  evbuffer* out = bufferevent_get_output(bev_.get());
  evbuffer_add(out, prefix.data(), prefix.size());
  if (!owner) {
    evbuffer_add_reference(out, body.data(), body.size(), nullptr, nullptr);
    return;
  }
  // libevent calls this once the referenced bytes are written or the buffer is freed.
  auto release = [](const void*, size_t, void* held) {
    delete static_cast<std::shared_ptr<const void>*>(held);
  };
  auto* held = new std::shared_ptr<const void>(std::move(owner));
  if (evbuffer_add_reference(out, body.data(), body.size(), release, held) != 0) delete held;
}

std::size_t ConnectionImpl::pendingOutputBytes() const {
  return bev_ ? evbuffer_get_length(bufferevent_get_output(bev_.get())) : 0;
}

std::optional<TcpPath> ConnectionImpl::tcpPath() const {
  if (!bev_) return std::nullopt;
  return readTcpPath(static_cast<int>(bufferevent_getfd(bev_.get())));
}

void ConnectionImpl::setLowWatermark(std::size_t bytes) {
  low_watermark_ = bytes;
  if (bev_) bufferevent_setwatermark(bev_.get(), EV_WRITE, bytes, 0);
}

void ConnectionImpl::setPriority(int priority) {
  if (!bev_) return;
  bufferevent_priority_set(bev_.get(), priority);
  // A background connection encrypts at most 64 KiB per callback, so that a loop shared
  // with an urgent connection never keeps a demand reply waiting behind a long SSL_write.
  if (priority > 0) bufferevent_set_max_single_write(bev_.get(), 64 * 1024);
}

namespace {
// A closed connection lingers until what it queued has reached the peer. Closing a socket
// that still has unread input makes the kernel send RST instead of FIN, and RST throws away
// the unsent rest of the send queue: the tail of the last frames (a Ping or a TLS session
// ticket from the peer is enough). So the lingering connection reads and discards, half-
// closes once its output is flushed, and is freed when the peer closes too, on an error, or
// after kLingerIdle without progress. A peer that keeps sending after the close (a flood the
// agent cut off) gets no more than kLingerDiscardLimit bytes read, then the RST it earned.
constexpr timeval kLingerIdle{5, 0};
constexpr std::size_t kLingerDiscardLimit = 1 << 20;

struct Linger {
  loop::BufferEventPtr bev;
  std::size_t discarded = 0;
};

// The lingering bufferevents of every loop, so that a loop that stops (and so runs no more of
// their callbacks) frees those still waiting for their peer.
std::mutex lingering_mu;
std::map<event_base*, std::map<bufferevent*, Linger>> lingering;

void endLinger(bufferevent* bev) {
  std::map<bufferevent*, Linger>::node_type ended;  // freed after the lock is released
  std::lock_guard lock(lingering_mu);
  auto it = lingering.find(bufferevent_get_base(bev));
  if (it == lingering.end()) return;
  ended = it->second.extract(bev);
  if (it->second.empty()) lingering.erase(it);
}

void lingerDone(bufferevent* bev, short, void*) { endLinger(bev); }

void lingerRead(bufferevent* bev, void* arg) {
  evbuffer* in = bufferevent_get_input(bev);
  auto* linger = static_cast<Linger*>(arg);
  linger->discarded += evbuffer_get_length(in);
  evbuffer_drain(in, evbuffer_get_length(in));
  if (linger->discarded > kLingerDiscardLimit) endLinger(bev);
}

void lingerWrite(bufferevent* bev, void*) {
  if (evbuffer_get_length(bufferevent_get_output(bev)) != 0) return;
  // FIN after the last byte; the peer answers with its own close, which ends the linger.
  ::shutdown(static_cast<int>(bufferevent_getfd(bev)), SHUT_WR);
}
}  // namespace

void freeLingeringConnections(event_base* base) {
  std::map<bufferevent*, Linger> left;
  {
    std::lock_guard lock(lingering_mu);
    auto it = lingering.find(base);
    if (it == lingering.end()) return;
    left.swap(it->second);
    lingering.erase(it);
  }
  left.clear();  // frees each bufferevent
}

void ConnectionImpl::close() {
  *alive_ = false;
  if (!bev_) return;
  bufferevent* bev = bev_.get();
  // A loop that stops runs none of the linger callbacks again; it hands its base to
  // freeLingeringConnections before freeing it.
  static std::once_flag finalizer_once;
  std::call_once(finalizer_once, [] { EventLoop::addBaseFinalizer(&freeLingeringConnections); });
  Linger* linger = nullptr;
  {
    std::lock_guard lock(lingering_mu);
    // std::map nodes do not move: the callbacks keep this pointer until endLinger erases it.
    linger = &(lingering[bufferevent_get_base(bev)][bev] = Linger{std::move(bev_)});
  }
  bufferevent_set_timeouts(bev, &kLingerIdle, &kLingerIdle);
  bufferevent_setwatermark(bev, EV_WRITE, 0, 0);
  bufferevent_setwatermark(bev, EV_READ, 0, 0);
  bufferevent_setcb(bev, &lingerRead, &lingerWrite, &lingerDone, linger);
  bufferevent_enable(bev, EV_READ | EV_WRITE);
  lingerWrite(bev, linger);
}

void ConnectionImpl::onRead(bufferevent*, void* arg) {
  static_cast<ConnectionImpl*>(arg)->readFrames();
}

void ConnectionImpl::readFrames() {
  std::shared_ptr<bool> alive = alive_;
  while (*alive && bev_) {
    evbuffer* in = bufferevent_get_input(bev_.get());
    std::size_t available = evbuffer_get_length(in);
    if (available < kHeaderSize) return;
    std::array<std::byte, kHeaderSize> raw;
    evbuffer_copyout(in, raw.data(), kHeaderSize);
    auto header = decodeHeader(raw, limits_);
    if (!header) return fail(header.error());
    std::size_t total = kHeaderSize + header->length;
    if (available < total) return;
    auto* data =
        reinterpret_cast<const std::byte*>(evbuffer_pullup(in, static_cast<ev_ssize_t>(total)));
    std::shared_ptr<Handlers> handlers = handlers_;
    if (handlers->on_frame) {
      handlers->on_frame(*header, std::span(data + kHeaderSize, header->length));
    }
    // The handler may have closed or destroyed this connection: touch nothing then.
    if (!*alive) return;
    evbuffer_drain(in, total);
  }
}

void ConnectionImpl::onWrite(bufferevent*, void* arg) {
  auto* self = static_cast<ConnectionImpl*>(arg);
  std::shared_ptr<Handlers> handlers = self->handlers_;
  if (self->bev_ && handlers->on_drained &&
      evbuffer_get_length(bufferevent_get_output(self->bev_.get())) <= self->low_watermark_) {
    handlers->on_drained();
  }
}

void ConnectionImpl::onEvent(bufferevent* bev, short what, void* arg) {
  auto* self = static_cast<ConnectionImpl*>(arg);
  if (what & (BEV_EVENT_EOF | BEV_EVENT_ERROR | BEV_EVENT_TIMEOUT)) {
    self->fail(Error::make(Errc::kClosed, "connection " + self->remote_, bevError(bev, what)));
  }
}

void ConnectionImpl::fail(const Error& e) {
  std::shared_ptr<Handlers> handlers = std::move(handlers_);
  handlers_ = std::make_shared<Handlers>();
  close();
  if (handlers->on_closed) handlers->on_closed(e);
}

}  // namespace lazymig::transport
