// A connected loopback TCP pair with the transport's socket options, for the floors.
#pragma once

#include <optional>

#include "sys/unique_fd.h"

namespace lazymig::bench {

struct LoopbackPair {
  sys::UniqueFd client;
  sys::UniqueFd server;
};

// TCP_NODELAY on both ends, as transport/connection.cc sets it. Nothing when a socket call
// fails (after saying which on stderr).
std::optional<LoopbackPair> loopbackPair();

}  // namespace lazymig::bench
