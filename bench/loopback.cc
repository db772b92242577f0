#include "bench/loopback.h"

#include <netinet/in.h>
#include <netinet/tcp.h>
#include <sys/socket.h>

#include <cstdio>

namespace lazymig::bench {

std::optional<LoopbackPair> loopbackPair() {
  sys::UniqueFd listener(::socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0));
  sockaddr_in addr{};
  addr.sin_family = AF_INET;
  addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  socklen_t len = sizeof addr;
  if (::bind(listener.get(), reinterpret_cast<sockaddr*>(&addr), sizeof addr) != 0 ||
      ::getsockname(listener.get(), reinterpret_cast<sockaddr*>(&addr), &len) != 0 ||
      ::listen(listener.get(), 1) != 0) {
    std::perror("floors: loopback listener");
    return std::nullopt;
  }
  LoopbackPair pair;
  pair.client = sys::UniqueFd(::socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0));
  // The handshake completes in the kernel's backlog, so connect before accept on one thread.
  if (::connect(pair.client.get(), reinterpret_cast<sockaddr*>(&addr), sizeof addr) != 0) {
    std::perror("floors: loopback connect");
    return std::nullopt;
  }
  pair.server = sys::UniqueFd(::accept4(listener.get(), nullptr, nullptr, SOCK_CLOEXEC));
  if (!pair.server.valid()) {
    std::perror("floors: loopback accept");
    return std::nullopt;
  }
  int one = 1;
  ::setsockopt(pair.client.get(), IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
  ::setsockopt(pair.server.get(), IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
  return pair;
}

}  // namespace lazymig::bench
