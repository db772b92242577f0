// The owner of one file descriptor. Nothing else in lazymig calls close(2).
#pragma once

#include <string>

#include "base/error.h"

namespace lazymig::sys {

class UniqueFd {
 public:
  UniqueFd() = default;
  explicit UniqueFd(int fd) : fd_(fd) {}
  ~UniqueFd() { reset(); }
  UniqueFd(UniqueFd&& other) noexcept : fd_(other.fd_) { other.fd_ = -1; }
  UniqueFd& operator=(UniqueFd&& other) noexcept;
  UniqueFd(const UniqueFd&) = delete;
  UniqueFd& operator=(const UniqueFd&) = delete;

  // Borrow the descriptor for a system call; ownership stays here.
  int get() const { return fd_; }
  bool valid() const { return fd_ >= 0; }
  explicit operator bool() const { return valid(); }
  void reset(int fd = -1);
  // Give up ownership; the caller now must close it. Named loudly on purpose.
  [[nodiscard]] int releaseOwnership();
  Result<UniqueFd> duplicate() const;
  // What the descriptor refers to, as /proc/self/fd names it ("/dev/null", "pipe:[123]",
  // "anon_inode:[userfaultfd]"): for errors that must say what a peer handed over.
  std::string describe() const;

 private:
  int fd_ = -1;
};

}  // namespace lazymig::sys
