#include "agent/core/migration_cpu.h"

namespace lazymig::agent {

void MigrationCpu::count(const loop::EventLoop& loop) {
  loop::CpuClock clock = loop.cpuClock();
  const auto from = clock.read();
  std::lock_guard lock(mu_);
  if (stopped_at_) return;
  counted_.push_back({std::move(clock), from});
}

void MigrationCpu::stop() {
  std::lock_guard lock(mu_);
  if (!stopped_at_) stopped_at_ = sumLocked();
}

std::chrono::nanoseconds MigrationCpu::total() const {
  std::lock_guard lock(mu_);
  return stopped_at_ ? *stopped_at_ : sumLocked();
}

std::chrono::nanoseconds MigrationCpu::sumLocked() const {
  std::chrono::nanoseconds sum{};
  for (const auto& c : counted_) sum += c.clock.read() - c.from;
  return sum;
}

std::optional<double> cpuSecondsPerGib(double cpu_seconds, std::uint64_t bytes_moved) {
  if (bytes_moved == 0) return std::nullopt;
  return cpu_seconds / (static_cast<double>(bytes_moved) / static_cast<double>(1ull << 30));
}

}  // namespace lazymig::agent
