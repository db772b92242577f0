// vCPU threads touching guest memory the way a running guest does, while its pages are still
// arriving: every access is timed, and every write is remembered for verification.
#pragma once

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
};

WorkloadResult runWorkload(const GuestMemory& memory, const WorkloadOptions& options);

struct VerifyResult {
  std::uint64_t pages = 0;
  std::uint64_t mismatches = 0;
  std::vector<std::pair<std::uint64_t, std::size_t>> first_mismatches;  // page, byte offset
};

// Every page equals the pattern, with the guest's stamps applied and zeros where ballooned.
VerifyResult verifyMemory(const GuestMemory& memory, const Pattern& pattern,
                          const WorkloadResult& work);

}  // namespace lazymig::testvm
