// A UNIX stream socket that can carry file descriptors (SCM_RIGHTS): the VMM handshake.
#pragma once

#include <sys/types.h>

#include <chrono>
#include <span>
#include <string>
#include <vector>

#include "base/error.h"
#include "sys/unique_fd.h"

namespace lazymig::sys {

struct PeerCredentials {
  pid_t pid = 0;
  uid_t uid = 0;
  gid_t gid = 0;
};

struct ReceivedMessage {
  std::string data;
  std::vector<UniqueFd> fds;
};

class UnixSocket {
 public:
  UnixSocket() = default;
  explicit UnixSocket(UniqueFd fd) : fd_(std::move(fd)) {}

  // Binds and listens at `path` and chmods it to `mode`. A stale socket file is replaced; one
  // that somebody still listens on is not (kAlreadyExists).
  static Result<UnixSocket> listen(const std::string& path, unsigned mode, int backlog = 16);
  static Result<UnixSocket> connect(const std::string& path);
  Result<UnixSocket> accept() const;  // blocking unless the socket is non-blocking

  Status sendWithFds(std::string_view data, std::span<const int> fds) const;
  // One recvmsg: at most max_bytes of data and max_fds descriptors. Truncated control data
  // (more fds than expected) is an error and the extra descriptors are closed by the kernel.
  Result<ReceivedMessage> receiveWithFds(std::size_t max_bytes, std::size_t max_fds) const;
  // Waits until readable or the timeout passes (kTimeout). A readable `cancel_fd` (an
  // eventfd a stopping owner signals) ends the wait early with kClosed.
  Status waitReadable(std::chrono::milliseconds timeout, int cancel_fd = -1) const;
  Status sendAll(std::string_view data) const;
  // Returns what one read(2) gave; empty on orderly close.
  Result<std::string> receiveSome(std::size_t max_bytes) const;

  Result<PeerCredentials> peerCredentials() const;
  Status setNonBlocking(bool on) const;
  int get() const { return fd_.get(); }
  bool valid() const { return fd_.valid(); }
  const UniqueFd& fd() const { return fd_; }

 private:
  UniqueFd fd_;
};

}  // namespace lazymig::sys
