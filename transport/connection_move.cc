// Moving an open connection from one loop to another (moveToLoop): a source accepts every
// channel on its peer loop and serves its urgent one on a thread of its own.
//
// An OpenSSL bufferevent belongs to one event_base, and one made with BEV_OPT_CLOSE_ON_FREE (as
// every connection of this transport is) frees its SSL and closes its socket in a finalizer
// that runs on a later turn of its loop. So the move takes references of its own first -- an
// SSL_up_ref and a duplicate of the socket --, stops and frees the old bufferevent, waits for
// its finalizer (a marker chunk in its input buffer: libevent frees the buffers, and so runs
// the chunk's cleanup, right after the bufferevent's own destructor), and only then posts the
// session and the socket to the target loop, which wraps them in a new bufferevent in state
// BUFFEREVENT_SSL_OPEN. No loop ever touches the session while the other may. Nothing is
// lost: the old bufferevent's events are deleted before anything is taken from it, what it had
// read and not delivered travels along, and what the peer sends meanwhile waits in the socket.
#include <event2/buffer.h>
#include <event2/bufferevent.h>
#include <event2/bufferevent_ssl.h>
#include <event2/bufferevent_struct.h>
#include <event2/event.h>
#include <fcntl.h>
#include <openssl/ssl.h>

#include <utility>

#include "transport/connection_impl.h"

namespace lazymig::transport {

namespace {

void releaseParts(ConnectionImpl::Parts& parts) {
  if (parts.ssl) SSL_free(std::exchange(parts.ssl, nullptr));
  if (parts.fd >= 0) evutil_closesocket(std::exchange(parts.fd, -1));
}

// Owns what moves between the two loops until the new bufferevent takes it: a move abandoned
// on the way (the target loop stopped) frees the session and closes the socket.
struct Move {
  Move(EventLoop& to, std::function<void(Result<std::unique_ptr<Connection>>)> then)
      : target(&to), poster(to.poster()), done(std::move(then)) {}
  Move(const Move&) = delete;
  Move& operator=(const Move&) = delete;
  ~Move() { releaseParts(parts); }

  ConnectionImpl::Parts parts;
  EventLoop* target;  // dereferenced only on its own thread (the loop is alive there)
  loop::LoopPoster poster;
  std::function<void(Result<std::unique_ptr<Connection>>)> done;
};

// Runs on the old loop once its bufferevent is finalized: the session is ours alone now.
void oldBufferEventFreed(const void*, std::size_t, void* arg) {
  std::shared_ptr<Move> move(static_cast<Move*>(arg));
  move->poster.post([move] {
    // A loop that stops runs what was posted before on the stopping thread, with its base about
    // to be freed: no new bufferevent on it then.
    if (!move->target->inLoopThread()) return;
    auto conn = ConnectionImpl::resume(move->target->base(), std::exchange(move->parts, {}));
    if (conn) return move->done(std::unique_ptr<Connection>(std::move(*conn)));
    move->done(std::unexpected(conn.error()));
  });
}

constexpr char kFinalizedMarker = 0;

}  // namespace

Status ConnectionImpl::detach(Parts& out, void (*on_freed)(const void*, std::size_t, void*),
                              void* arg) {
  if (!bev_) return lazymig::fail(Errc::kState, "move connection " + remote_, "it is closed");
  bufferevent* bev = bev_.get();
  if (auto queued = evbuffer_get_length(bufferevent_get_output(bev)); queued != 0) {
    return lazymig::fail(Errc::kState, "move connection " + remote_,
                         std::to_string(queued) + " bytes are still queued to send");
  }
  SSL* ssl = bufferevent_openssl_get_ssl(bev);
  const auto fd = bufferevent_getfd(bev);
  if (!ssl || fd < 0)
    return lazymig::fail(Errc::kState, "move connection " + remote_, "no TLS socket");
  const int copy = ::fcntl(fd, F_DUPFD_CLOEXEC, 0);
  if (copy < 0) return lazymig::failSys("fcntl(F_DUPFD_CLOEXEC)", "move connection " + remote_);
  // From here no event of the old bufferevent may fire: one would read the peer's next bytes
  // into a buffer nobody reads again. bufferevent_disable alone leaves an event armed while
  // the session waits on the other direction, so both are deleted outright.
  bufferevent_disable(bev, EV_READ | EV_WRITE);
  event_del(&bev->ev_read);
  event_del(&bev->ev_write);
  evbuffer* in = bufferevent_get_input(bev);
  std::vector<std::byte> unread(evbuffer_get_length(in));
  evbuffer_remove(in, unread.data(), unread.size());
  // Records the session decrypted and libevent did not take yet.
  while (SSL_pending(ssl) > 0) {
    const std::size_t at = unread.size();
    unread.resize(at + static_cast<std::size_t>(SSL_pending(ssl)));
    const int n = SSL_read(ssl, unread.data() + at, static_cast<int>(unread.size() - at));
    unread.resize(at + static_cast<std::size_t>(std::max(n, 0)));
    if (n <= 0) break;
  }
  if (evbuffer_add_reference(in, &kFinalizedMarker, 1, on_freed, arg) != 0) {
    evutil_closesocket(copy);
    return lazymig::fail(Errc::kSystem, "move connection " + remote_,
                         "evbuffer_add_reference failed");
  }
  SSL_up_ref(ssl);
  out.ssl = ssl;
  out.fd = copy;
  out.peer = peer_;
  out.limits = limits_;
  out.unread = std::move(unread);
  *alive_ = false;
  handlers_ = std::make_shared<Handlers>();
  bev_.reset();  // its finalizer closes its own socket and drops its own reference
  return {};
}

Result<std::unique_ptr<ConnectionImpl>> ConnectionImpl::resume(event_base* base, Parts parts) {
  // The session's old BIO names the socket the old bufferevent closed: give it the duplicate.
  BIO* bio = BIO_new_socket(parts.fd, BIO_NOCLOSE);
  if (!bio) {
    releaseParts(parts);
    return lazymig::fail(Errc::kSystem, "move connection", "BIO_new_socket failed");
  }
  SSL_set_bio(parts.ssl, bio, bio);
  // The new bufferevent owns the session and the socket (and frees the session even when it
  // fails to be made).
  bufferevent* bev =
      bufferevent_openssl_socket_new(base, parts.fd, std::exchange(parts.ssl, nullptr),
                                     BUFFEREVENT_SSL_OPEN, BEV_OPT_CLOSE_ON_FREE);
  if (!bev) {
    releaseParts(parts);
    return lazymig::fail(Errc::kSystem, "move connection", "bufferevent_openssl_socket_new failed");
  }
  parts.fd = -1;
  auto conn = std::make_unique<ConnectionImpl>(bev, std::move(parts.peer), parts.limits);
  if (!parts.unread.empty()) {
    evbuffer_add(bufferevent_get_input(bev), parts.unread.data(), parts.unread.size());
    // Delivered on the loop's next turn: after the new owner has set its handlers.
    bufferevent_trigger(bev, EV_READ, BEV_TRIG_IGNORE_WATERMARKS | BEV_TRIG_DEFER_CALLBACKS);
  }
  return conn;
}

Status moveToLoop(std::unique_ptr<Connection> conn, EventLoop& target,
                  std::function<void(Result<std::unique_ptr<Connection>>)> done) {
  auto* impl = dynamic_cast<ConnectionImpl*>(conn.get());
  if (!impl) {
    conn->close();
    return fail(Errc::kState, "move connection", "not a TLS connection of this transport");
  }
  auto move = std::make_unique<Move>(target, std::move(done));
  if (auto ok = impl->detach(move->parts, &oldBufferEventFreed, move.get()); !ok) {
    conn->close();
    return ok;
  }
  (void)move.release();  // oldBufferEventFreed owns it now
  return {};
}

}  // namespace lazymig::transport
