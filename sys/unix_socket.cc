#include "sys/unix_socket.h"

#include <fcntl.h>
#include <poll.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <unistd.h>

#include <cstring>

namespace lazymig::sys {
namespace {

Result<sockaddr_un> addressOf(const std::string& path) {
  sockaddr_un addr{};
  addr.sun_family = AF_UNIX;
  if (path.empty() || path.size() >= sizeof(addr.sun_path)) {
    return fail(Errc::kInvalidArgument, "unix socket path",
                "'" + path + "' is empty or longer than " +
                    std::to_string(sizeof(addr.sun_path) - 1) + " bytes");
  }
  std::memcpy(addr.sun_path, path.c_str(), path.size() + 1);
  return addr;
}

}  // namespace

Result<UnixSocket> UnixSocket::listen(const std::string& path, unsigned mode, int backlog) {
  auto addr = addressOf(path);
  if (!addr) return std::unexpected(addr.error());
  UniqueFd fd(::socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0));
  if (!fd) return failSys("socket", "AF_UNIX for " + path);
  struct stat st {};
  if (::lstat(path.c_str(), &st) == 0 && S_ISSOCK(st.st_mode)) {
    // Only a stale socket (its listener gone: ECONNREFUSED) is replaced. Unlinking a live
    // one would silently steal every later connection from whoever listens there -- another
    // migration's VMM, or the agent's own control API.
    UniqueFd probe(::socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0));
    if (probe && ::connect(probe.get(), reinterpret_cast<sockaddr*>(&*addr), sizeof *addr) == 0) {
      return fail(Errc::kAlreadyExists, "listen",
                  "'" + path + "': another process is listening on this socket");
    }
    ::unlink(path.c_str());
  }
  if (::bind(fd.get(), reinterpret_cast<sockaddr*>(&*addr), sizeof *addr) != 0) {
    return failSys("bind", path);
  }
  if (::chmod(path.c_str(), mode) != 0) return failSys("chmod", path);
  if (::listen(fd.get(), backlog) != 0) return failSys("listen", path);
  return UnixSocket(std::move(fd));
}

Result<UnixSocket> UnixSocket::connect(const std::string& path) {
  auto addr = addressOf(path);
  if (!addr) return std::unexpected(addr.error());
  UniqueFd fd(::socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0));
  if (!fd) return failSys("socket", "AF_UNIX for " + path);
  if (::connect(fd.get(), reinterpret_cast<sockaddr*>(&*addr), sizeof *addr) != 0) {
    return failSys("connect", path);
  }
  return UnixSocket(std::move(fd));
}

Result<UnixSocket> UnixSocket::accept() const {
  int fd = ::accept4(fd_.get(), nullptr, nullptr, SOCK_CLOEXEC);
  if (fd < 0) return failSys("accept");
  return UnixSocket(UniqueFd(fd));
}

Status UnixSocket::sendWithFds(std::string_view data, std::span<const int> fds) const {
  iovec iov{const_cast<char*>(data.data()), data.size()};
  msghdr msg{};
  msg.msg_iov = &iov;
  msg.msg_iovlen = 1;
  std::vector<char> control(CMSG_SPACE(sizeof(int) * fds.size()));
  if (!fds.empty()) {
    msg.msg_control = control.data();
    msg.msg_controllen = control.size();
    cmsghdr* cmsg = CMSG_FIRSTHDR(&msg);
    cmsg->cmsg_level = SOL_SOCKET;
    cmsg->cmsg_type = SCM_RIGHTS;
    cmsg->cmsg_len = CMSG_LEN(sizeof(int) * fds.size());
    std::memcpy(CMSG_DATA(cmsg), fds.data(), sizeof(int) * fds.size());
  }
  ssize_t n = ::sendmsg(fd_.get(), &msg, MSG_NOSIGNAL);
  if (n < 0) return failSys("sendmsg", "with " + std::to_string(fds.size()) + " fds");
  if (static_cast<std::size_t>(n) != data.size()) {
    // The fds went with the first byte; send the rest of the data plainly.
    return sendAll(data.substr(static_cast<std::size_t>(n)));
  }
  return {};
}

Result<ReceivedMessage> UnixSocket::receiveWithFds(std::size_t max_bytes,
                                                   std::size_t max_fds) const {
  ReceivedMessage out;
  out.data.resize(max_bytes);
  iovec iov{out.data.data(), out.data.size()};
  std::vector<char> control(CMSG_SPACE(sizeof(int) * (max_fds == 0 ? 1 : max_fds)));
  msghdr msg{};
  msg.msg_iov = &iov;
  msg.msg_iovlen = 1;
  msg.msg_control = control.data();
  msg.msg_controllen = control.size();
  ssize_t n;
  do {
    n = ::recvmsg(fd_.get(), &msg, MSG_CMSG_CLOEXEC);
  } while (n < 0 && errno == EINTR);
  if (n < 0) return failSys("recvmsg");
  out.data.resize(static_cast<std::size_t>(n));
  for (cmsghdr* c = CMSG_FIRSTHDR(&msg); c != nullptr; c = CMSG_NXTHDR(&msg, c)) {
    if (c->cmsg_level != SOL_SOCKET || c->cmsg_type != SCM_RIGHTS) continue;
    std::size_t count = (c->cmsg_len - CMSG_LEN(0)) / sizeof(int);
    for (std::size_t i = 0; i < count; ++i) {
      int fd;
      std::memcpy(&fd, CMSG_DATA(c) + i * sizeof(int), sizeof fd);
      out.fds.emplace_back(fd);
    }
  }
  // CMSG_SPACE rounds up, so the buffer can hold a few more fds than asked for: count them.
  if ((msg.msg_flags & MSG_CTRUNC) || out.fds.size() > max_fds) {
    return fail(Errc::kProtocol, "recvmsg",
                "the peer sent more than " + std::to_string(max_fds) + " file descriptors");
  }
  return out;
}

Status UnixSocket::waitReadable(std::chrono::milliseconds timeout, int cancel_fd) const {
  pollfd p[2] = {{fd_.get(), POLLIN, 0}, {cancel_fd, POLLIN, 0}};
  int r;
  do {
    r = ::poll(p, cancel_fd >= 0 ? 2 : 1, static_cast<int>(timeout.count()));
  } while (r < 0 && errno == EINTR);
  if (r < 0) return failSys("poll");
  if (cancel_fd >= 0 && (p[1].revents & POLLIN)) {
    return fail(Errc::kClosed, "unix socket", "wait cancelled: the listener is stopping");
  }
  if (r == 0)
    return fail(Errc::kTimeout, "unix socket",
                "nothing to read within " + std::to_string(timeout.count()) + " ms");
  return {};
}

Status UnixSocket::sendAll(std::string_view data) const {
  while (!data.empty()) {
    ssize_t n = ::send(fd_.get(), data.data(), data.size(), MSG_NOSIGNAL);
    if (n < 0) {
      if (errno == EINTR) continue;
      if (errno == EAGAIN) {
        pollfd p{fd_.get(), POLLOUT, 0};
        ::poll(&p, 1, 1000);
        continue;
      }
      return failSys("send");
    }
    data.remove_prefix(static_cast<std::size_t>(n));
  }
  return {};
}

Result<std::string> UnixSocket::receiveSome(std::size_t max_bytes) const {
  std::string out(max_bytes, '\0');
  ssize_t n;
  do {
    n = ::recv(fd_.get(), out.data(), out.size(), 0);
  } while (n < 0 && errno == EINTR);
  if (n < 0) return failSys("recv");
  out.resize(static_cast<std::size_t>(n));
  return out;
}

Result<PeerCredentials> UnixSocket::peerCredentials() const {
  ucred cred{};
  socklen_t len = sizeof cred;
  if (::getsockopt(fd_.get(), SOL_SOCKET, SO_PEERCRED, &cred, &len) != 0) {
    return failSys("getsockopt", "SO_PEERCRED");
  }
  return PeerCredentials{cred.pid, cred.uid, cred.gid};
}

Status UnixSocket::setNonBlocking(bool on) const {
  int flags = ::fcntl(fd_.get(), F_GETFL);
  if (flags < 0) return failSys("fcntl", "F_GETFL");
  flags = on ? (flags | O_NONBLOCK) : (flags & ~O_NONBLOCK);
  if (::fcntl(fd_.get(), F_SETFL, flags) != 0) return failSys("fcntl", "F_SETFL");
  return {};
}

}  // namespace lazymig::sys
