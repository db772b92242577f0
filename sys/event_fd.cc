#include "sys/event_fd.h"

#include <sys/eventfd.h>
#include <unistd.h>

#include <cstdint>

namespace lazymig::sys {

Result<EventFd> EventFd::create() {
  int fd = ::eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK);
  if (fd < 0) return failSys("eventfd");
  return EventFd(UniqueFd(fd));
}

void EventFd::signal() const {
  std::uint64_t one = 1;
  ssize_t n = ::write(fd_.get(), &one, sizeof one);
  (void)n;  // EAGAIN means the counter is saturated: the reader will wake anyway.
}

void EventFd::drain() const {
  std::uint64_t value;
  ssize_t n = ::read(fd_.get(), &value, sizeof value);
  (void)n;
}

}  // namespace lazymig::sys
