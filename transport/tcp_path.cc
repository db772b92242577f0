// <linux/tcp.h>, not glibc's <netinet/tcp.h>: only the kernel's struct has tcpi_min_rtt, and
// the two headers cannot be included together.
#include "transport/tcp_path.h"

#include <linux/tcp.h>
#include <netinet/in.h>
#include <sys/socket.h>

#include <cstddef>

namespace lazymig::transport {

std::optional<TcpPath> readTcpPath(int fd) {
  tcp_info info{};
  socklen_t len = sizeof info;
  if (fd < 0 || ::getsockopt(fd, IPPROTO_TCP, TCP_INFO, &info, &len) != 0) return std::nullopt;
  TcpPath path{std::chrono::microseconds(info.tcpi_rtt), std::chrono::microseconds(0)};
  // Kernels before 4.6 return a shorter struct without min_rtt.
  if (len >= offsetof(tcp_info, tcpi_min_rtt) + sizeof info.tcpi_min_rtt) {
    path.min_rtt = std::chrono::microseconds(info.tcpi_min_rtt);
  }
  return path;
}

}  // namespace lazymig::transport
