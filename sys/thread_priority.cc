#include "sys/thread_priority.h"

#include <sys/resource.h>
#include <unistd.h>

#include <cerrno>
#include <fstream>
#include <string>

namespace lazymig::sys {

namespace {
constexpr int kCapSysNice = 23;  // linux/capability.h
}  // namespace

Status setThisThreadNice(int nice) {
  // PRIO_PROCESS with a thread id sets that one thread (man 2 setpriority, "BUGS").
  const auto tid = static_cast<id_t>(::gettid());
  if (::setpriority(PRIO_PROCESS, tid, nice) != 0) {
    return failSys("setpriority",
                   "thread " + std::to_string(tid) + " to nice " + std::to_string(nice));
  }
  return {};
}

int thisThreadNice() {
  errno = 0;
  return ::getpriority(PRIO_PROCESS, static_cast<id_t>(::gettid()));
}

bool mayUseNice(int nice) {
  rlimit limit{};
  // RLIMIT_NICE lets a thread go down to nice 20 - rlim_cur (man 2 getrlimit).
  if (::getrlimit(RLIMIT_NICE, &limit) == 0 &&
      (limit.rlim_cur == RLIM_INFINITY || 20 - static_cast<long long>(limit.rlim_cur) <= nice)) {
    return true;
  }
  std::ifstream status("/proc/self/status");
  for (std::string line; std::getline(status, line);) {
    if (line.rfind("CapEff:", 0) != 0) continue;
    const unsigned long long caps = std::stoull(line.substr(7), nullptr, 16);
    return (caps >> kCapSysNice) & 1u;
  }
  return false;
}

}  // namespace lazymig::sys
