// The source VM still running while the agent copies its memory (pre-copy): vCPU threads keep
// writing stamps into guest memory until the orchestrator pauses the VM. Every write goes
// through this process's page tables, as a running guest's do, so the agent's write tracking
// (sys/write_tracker.h) sees it.
#pragma once

#include <atomic>
#include <chrono>
#include <cstdint>
#include <map>
#include <optional>
#include <thread>
#include <vector>

#include "testvm/guest_memory.h"

namespace lazymig::testvm {

struct LiveWriteOptions {
  unsigned vcpus = 2;
  std::uint64_t seed = 42;
  // Writes per second per vCPU; 0: as fast as it can. A real guest dirties memory at some
  // rate, and pre-copy converges only when the link outruns it.
  std::uint64_t writes_per_s = 0;
};

// What the source guest wrote before the pause: the destination expects these stamps.
struct LiveWrites {
  std::map<std::uint64_t, std::uint64_t> stamps;  // page -> last generation written
  std::uint64_t writes = 0;
  double seconds = 0;  // from start to pause
};

class LiveVcpus {
 public:
  // Starts the vCPUs. Nine writes in ten land in the hot set (testvm/workload.h), the rest
  // anywhere; each vCPU writes only pages of its own (page % vcpus == id), so the last stamp
  // of a page is well defined.
  LiveVcpus(const GuestMemory& memory, LiveWriteOptions options);
  ~LiveVcpus();
  LiveVcpus(const LiveVcpus&) = delete;
  LiveVcpus& operator=(const LiveVcpus&) = delete;

  // The orchestrator's pause: every vCPU stops after its current write and is joined; nothing
  // writes guest memory once this returns. Idempotent.
  LiveWrites pause();

 private:
  struct Vcpu {
    std::thread thread;
    // Per page, the last generation this vCPU wrote (0: none): bounded however long it runs.
    std::vector<std::uint64_t> last_generation;
    std::uint64_t writes = 0;
  };
  void run(unsigned id);

  const GuestMemory& memory_;
  LiveWriteOptions options_;
  std::atomic<bool> paused_{false};
  std::vector<Vcpu> vcpus_;
  std::chrono::steady_clock::time_point started_;
  std::optional<LiveWrites> result_;
};

}  // namespace lazymig::testvm
