// The test VM as a real KVM virtual machine: vCPU threads in KVM_RUN executing the guest
// program (testvm/guest_program.S) on the VMM's guest memory, mapped into the guest by
// memslots, so that a guest access to a page still missing blocks inside KVM on the uffd
// exactly as a Firecracker vCPU does.
#pragma once

#include <cstdint>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "base/error.h"
#include "sys/kvm.h"
#include "sys/kvm_vcpu.h"
#include "testvm/fault_channel.h"
#include "testvm/guest_layout.h"
#include "testvm/guest_memory.h"
#include "testvm/userfault_bitmap.h"
#include "testvm/workload.h"

namespace lazymig::testvm {

// Whether /dev/kvm can run a guest here: creates a VM and runs a two-instruction long-mode
// program on it. The error says which step failed.
Status probeKvmGuest();

class KvmGuest {
 public:
  // The VM (for a guest_memfd, the one it belongs to), a memslot per region of guest memory,
  // one for the userfault bitmap (when given) and one for the control memory, and the vCPUs.
  static Result<std::unique_ptr<KvmGuest>> create(const GuestMemory& memory,
                                                  const UserfaultBitmap* bitmap,
                                                  const WorkloadOptions& options);

  // Runs the guest program from its start on every vCPU, one thread each in KVM_RUN, until all
  // report done; again for each call. `channel` answers the guest's userfault exits
  // (guest_memfd); null: there are none. `balloon`: the balloon device discards pages meanwhile.
  Result<WorkloadResult> run(FaultChannel* channel, bool balloon);

  // "guest_memfd": the memslots are backed by the guest_memfd itself
  // (KVM_SET_USER_MEMORY_REGION2); "vmm-mapping": by the VMM's mapping of the memory.
  const std::string& memslotBacking() const { return memslot_backing_; }
  // Why a guest_memfd memslot was refused, when it was.
  const std::string& memslotNote() const { return memslot_note_; }
  std::uint64_t tscKhz() const { return tsc_khz_; }

 private:
  KvmGuest(const GuestMemory& memory, const UserfaultBitmap* bitmap, WorkloadOptions options)
      : memory_(memory), bitmap_(bitmap), options_(std::move(options)) {}
  Status addMemslots();
  // Points every vCPU at the start of the guest program, in long mode.
  Status enterProgram();
  void writeParams();

  const GuestMemory& memory_;
  const UserfaultBitmap* bitmap_;
  WorkloadOptions options_;
  std::optional<sys::KvmVm> own_vm_;
  const sys::KvmVm* vm_ = nullptr;
  ControlMemory control_;
  std::vector<sys::KvmVcpu> vcpus_;
  std::uint64_t mem_base_ = 0;
  std::string memslot_backing_ = "vmm-mapping";
  std::string memslot_note_;
  std::uint64_t tsc_khz_ = 0;
};

}  // namespace lazymig::testvm
