// vCPU threads touching guest memory the way a running guest does, while its pages are still
// arriving: every access is timed, and every write is remembered for verification.
#pragma once

#include <algorithm>
#include <atomic>
#include <cstdint>
#include <functional>
#include <map>
#include <string>
#include <vector>

#include "testvm/guest_memory.h"
#include "testvm/pattern.h"

namespace lazymig::testvm {

enum class AccessPattern { kSequential, kRandom, kHot, kWrite };
Result<AccessPattern> parseAccessPattern(const std::string& name);

struct WorkloadOptions {
  unsigned vcpus = 4;
  AccessPattern pattern = AccessPattern::kHot;
  std::uint64_t accesses = 20000;  // per vCPU
  bool balloon = false;            // anonymous memory only
  std::uint64_t seed = 42;
  double zero_ratio = 0.25;  // Pattern::zero_ratio: the KVM guest checks pages against it
  // Runs on the vCPU thread before each access to 4 KiB page `page`, inside the timed span:
  // the guest_memfd variant's userfault exit (FaultChannel::beforeAccess). Empty: none.
  std::function<void(unsigned vcpu, std::uint64_t page)> before_access;
};

struct WorkloadResult {
  std::vector<std::uint64_t> latencies_ns;        // one per access
  std::map<std::uint64_t, std::uint64_t> stamps;  // page -> last stamp generation written
  std::vector<bool> ballooned;                    // per page
  std::uint64_t accesses = 0;
  std::uint64_t writes = 0;
  std::uint64_t ballooned_pages = 0;
  double seconds = 0;
  // "kvm": KVM vCPUs ran the guest program; "threads": host threads stood in for them.
  std::string vcpu_kind = "threads";
  // Progress over time: (ns since the workload started, accesses done by all vCPUs so far).
  std::vector<std::pair<std::uint64_t, std::uint64_t>> progress;
  // The guest's own check of the pages it read (KVM vCPUs only; threads leave it to the VMM).
  std::uint64_t guest_checked_reads = 0;
  std::uint64_t guest_mismatches = 0;
  std::vector<std::uint64_t> guest_mismatch_pages;  // the first few
};

// A guest write: the stamp of (page, generation) at the page's stamp offset, word by word.
void writeStamp(const GuestMemory& memory, std::uint64_t page, std::uint64_t generation);

// The hot pattern's working set: a tenth of the pages from a seed-chosen start, the same on
// the source VM (testvm/live_vcpus.h) as on the destination.
inline std::uint64_t hotSetPages(std::uint64_t pages) {
  return std::max<std::uint64_t>(1, pages / 10);
}
std::uint64_t hotSetStart(std::uint64_t pages, std::uint64_t seed);

// Host threads standing in for vCPUs (--vcpus-as-threads, or where KVM cannot run a guest).
WorkloadResult runWorkload(const GuestMemory& memory, const WorkloadOptions& options);

// The balloon device: discards pages from the top eighth of anonymous guest memory while the
// workload runs, spread over its progress (accesses done by all vCPUs).
void runBalloon(const GuestMemory& memory, const WorkloadOptions& options,
                const std::atomic<std::uint64_t>& progress, std::vector<bool>& ballooned);

struct VerifyResult {
  std::uint64_t pages = 0;
  std::uint64_t mismatches = 0;
  std::vector<std::pair<std::uint64_t, std::size_t>> first_mismatches;  // page, byte offset
};

// Every page equals the pattern, with the guest's stamps applied and zeros where ballooned.
VerifyResult verifyMemory(const GuestMemory& memory, const Pattern& pattern,
                          const WorkloadResult& work);

}  // namespace lazymig::testvm
