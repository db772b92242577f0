// An eventfd used to wake a thread's poll loop (stop requests, posted work).
#pragma once

#include "base/error.h"
#include "sys/unique_fd.h"

namespace lazymig::sys {

class EventFd {
 public:
  static Result<EventFd> create();
  void signal() const;
  void drain() const;
  int pollFd() const { return fd_.get(); }

 private:
  explicit EventFd(UniqueFd fd) : fd_(std::move(fd)) {}
  UniqueFd fd_;
};

}  // namespace lazymig::sys
