#include "sys/unique_fd.h"

#include <fcntl.h>
#include <unistd.h>

namespace lazymig::sys {

UniqueFd& UniqueFd::operator=(UniqueFd&& other) noexcept {
  if (this != &other) {
    reset(other.fd_);
    other.fd_ = -1;
  }
  return *this;
}

void UniqueFd::reset(int fd) {
  if (fd_ >= 0) {
    // close(2) may report EINTR, but the descriptor is released either way on Linux;
    // retrying could close a descriptor another thread just received.
    ::close(fd_);
  }
  fd_ = fd;
}

int UniqueFd::releaseOwnership() {
  int fd = fd_;
  fd_ = -1;
  return fd;
}

Result<UniqueFd> UniqueFd::duplicate() const {
  int fd = ::fcntl(fd_, F_DUPFD_CLOEXEC, 0);
  if (fd < 0) return failSys("dup", "fd " + std::to_string(fd_));
  return UniqueFd(fd);
}

std::string UniqueFd::describe() const {
  if (fd_ < 0) return "no descriptor";
  char target[256];
  std::string link = "/proc/self/fd/" + std::to_string(fd_);
  ssize_t n = ::readlink(link.c_str(), target, sizeof target - 1);
  if (n < 0) return "unknown (" + link + " unreadable)";
  return std::string(target, static_cast<std::size_t>(n));
}

}  // namespace lazymig::sys
