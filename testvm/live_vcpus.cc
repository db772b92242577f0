#include "testvm/live_vcpus.h"

#include <random>

#include "testvm/workload.h"

namespace lazymig::testvm {

using Clock = std::chrono::steady_clock;

LiveVcpus::LiveVcpus(const GuestMemory& memory, LiveWriteOptions options)
    : memory_(memory), options_(options), vcpus_(std::max(1u, options.vcpus)) {
  options_.vcpus = static_cast<unsigned>(vcpus_.size());
  started_ = Clock::now();
  for (unsigned id = 0; id < vcpus_.size(); ++id) {
    vcpus_[id].last_generation.assign(memory.pageCount(), 0);
    vcpus_[id].thread = std::thread([this, id] { run(id); });
  }
}

LiveVcpus::~LiveVcpus() { pause(); }

void LiveVcpus::run(unsigned id) {
  const std::uint64_t pages = memory_.pageCount();
  const std::uint64_t vcpus = options_.vcpus;
  const std::uint64_t hot_count = hotSetPages(pages);
  const std::uint64_t hot_start = hotSetStart(pages, options_.seed);
  std::mt19937_64 rng(options_.seed * 7919 + id);
  // Pacing, not synchronisation: a guest that writes at a steady rate.
  const auto interval = options_.writes_per_s == 0
                            ? Clock::duration::zero()
                            : std::chrono::duration_cast<Clock::duration>(
                                  std::chrono::duration<double>(1.0 / options_.writes_per_s));
  auto next = Clock::now();
  Vcpu& self = vcpus_[id];
  for (std::uint64_t generation = 1; !paused_.load(std::memory_order_relaxed); ++generation) {
    std::uint64_t page = rng() % 10 != 0 ? hot_start + rng() % hot_count : rng() % pages;
    page = page - page % vcpus + id;
    if (page >= pages) page = id % pages;
    if (page % vcpus != id) continue;  // fewer pages than vCPUs: this one has none
    writeStamp(memory_, page, generation);
    self.last_generation[page] = generation;
    ++self.writes;
    if (interval != Clock::duration::zero()) {
      next += interval;
      std::this_thread::sleep_until(next);
    }
  }
}

LiveWrites LiveVcpus::pause() {
  if (result_) return *result_;
  paused_.store(true);
  for (auto& v : vcpus_) {
    if (v.thread.joinable()) v.thread.join();
  }
  LiveWrites out;
  out.seconds = std::chrono::duration<double>(Clock::now() - started_).count();
  for (const auto& v : vcpus_) {
    for (std::uint64_t page = 0; page < v.last_generation.size(); ++page) {
      if (v.last_generation[page] != 0) out.stamps[page] = v.last_generation[page];
    }
    out.writes += v.writes;
  }
  result_ = out;
  return out;
}

}  // namespace lazymig::testvm
