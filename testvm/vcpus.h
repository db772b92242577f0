// The destination test VM's vCPUs: KVM vCPUs executing the guest program wherever /dev/kvm can
// run a guest, else (or with --vcpus-as-threads) host threads standing in for them.
#pragma once

#include <memory>
#include <string>

#include <nlohmann/json.hpp>

#include "base/error.h"
#include "testvm/fault_channel.h"
#include "testvm/guest_memory.h"
#include "testvm/kvm_guest.h"
#include "testvm/userfault_bitmap.h"
#include "testvm/workload.h"

namespace lazymig::testvm {

class Vcpus {
 public:
  // Probes KVM (unless as_threads) and, where it runs a guest, sets the KVM guest up; says on
  // stderr when threads stand in because it cannot.
  static Result<Vcpus> choose(const GuestMemory& memory, const UserfaultBitmap* bitmap,
                              const WorkloadOptions& options, bool as_threads);

  // Runs the workload once on every vCPU. `channel`: the guest_memfd variant's FaultRequests.
  Result<WorkloadResult> run(FaultChannel* channel);
  // Runs it again once every page is present (no balloon): the guest not migrating.
  Result<WorkloadResult> runBaseline();
  // "vcpus" ("kvm" or "threads"), why KVM was not used, and the memslots' backing.
  void describe(nlohmann::ordered_json& out) const;
  // An access slower than this waited for a page (a fault) rather than only touched memory.
  std::uint64_t faultingThresholdNs() const;
  bool kvm() const { return kvm_ != nullptr; }

 private:
  Vcpus(const GuestMemory& memory, WorkloadOptions options)
      : memory_(&memory), options_(std::move(options)) {}

  const GuestMemory* memory_;
  WorkloadOptions options_;
  std::unique_ptr<KvmGuest> kvm_;
  std::string why_threads_;
};

// The guest's view of the run for the demo: when its workload started (Unix ms), when the
// migration completed (ms after that), its progress, and the baseline's when there is one.
nlohmann::json guestViewJson(const WorkloadResult& work, const WorkloadResult* baseline,
                             double start_unix_ms, double completed_ms);

// The guest's progress as JSON: [[ms since the workload started, accesses done], ...], one
// point per `step_ms` at most (the last report in each step).
nlohmann::json progressJson(const WorkloadResult& work, double step_ms);

}  // namespace lazymig::testvm
