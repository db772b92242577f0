// What the kernel knows about a TCP connection's path (TCP_INFO), for timing demand faults:
// the round trip it measured from its own acknowledgements, which no application queue delays.
#pragma once

#include <chrono>
#include <optional>

namespace lazymig::transport {

struct TcpPath {
  // Smoothed round trip (srtt). With delayed acknowledgements piggybacked on replies it can
  // include the peer application's reply time, so it is not a clean floor.
  std::chrono::microseconds rtt{0};
  // The smallest round trip seen over the kernel's window (net.ipv4.tcp_min_rtt_wlen, 5
  // minutes): the path's propagation and kernel cost when nothing queued.
  std::chrono::microseconds min_rtt{0};
};

// getsockopt(TCP_INFO) on a connected TCP socket; nullopt when it fails (not TCP, closed).
std::optional<TcpPath> readTcpPath(int fd);

}  // namespace lazymig::transport
