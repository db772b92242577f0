// The CPU a migration's threads spend, read from their own clocks (loop::CpuClock), for the
// migration's cpu_seconds and cpu_seconds_per_gib (issue 14: the agents' CPU per GiB moved,
// read against lazymig-floors' CPU floor of the same run).
#pragma once

#include <chrono>
#include <cstdint>
#include <mutex>
#include <optional>
#include <vector>

#include "loop/event_loop.h"

namespace lazymig::agent {

class MigrationCpu {
 public:
  // Counts `loop`'s CPU from now on; its time before belongs to others. A loop shared with
  // other migrations (the source's peer loop) is charged whole: with several migrations at
  // once, each one's figure includes the others' work. Any thread.
  void count(const loop::EventLoop& loop);
  // At a final state: the total stands from here, whatever the loops do next. Idempotent.
  void stop();
  std::chrono::nanoseconds total() const;

 private:
  struct Counted {
    loop::CpuClock clock;
    std::chrono::nanoseconds from;
  };
  std::chrono::nanoseconds sumLocked() const;

  mutable std::mutex mu_;
  std::vector<Counted> counted_;
  std::optional<std::chrono::nanoseconds> stopped_at_;
};

// CPU seconds per GiB of guest memory moved; nothing before anything was moved.
std::optional<double> cpuSecondsPerGib(double cpu_seconds, std::uint64_t bytes_moved);

}  // namespace lazymig::agent
