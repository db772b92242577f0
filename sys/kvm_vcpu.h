// One KVM vCPU: its fd and its kvm_run mapping, set up to enter a 64-bit guest program directly
// in long mode and run it until it exits to the VMM.
#pragma once

#include <cstdint>
#include <string>

#include "base/error.h"
#include "sys/kvm.h"
#include "sys/mapping.h"
#include "sys/unique_fd.h"

namespace lazymig::sys {

// Why KVM_RUN returned: the guest wrote a port (`out`), halted, or something the VMM does not
// emulate (reason is KVM's exit_reason then).
struct VcpuExit {
  enum class Kind { kPortOut, kHalt, kOther };
  Kind kind = Kind::kOther;
  std::uint16_t port = 0;
  std::uint32_t value = 0;  // the written value, zero-extended (1, 2 or 4 bytes)
  std::uint32_t reason = 0;
};

// Where a long-mode guest starts: its page tables (CR3), instruction and stack pointers and
// RDI, the one argument the guest program takes.
struct LongModeEntry {
  std::uint64_t cr3 = 0;
  std::uint64_t rip = 0;
  std::uint64_t rsp = 0;
  std::uint64_t rdi = 0;
};

class KvmVcpu {
 public:
  static Result<KvmVcpu> create(const KvmVm& vm, unsigned id);

  // Gives the vCPU the CPUID KVM supports (long mode needs it), flat 64-bit segments, paging
  // with PAE and EFER.LME|LMA, and the entry's registers: no firmware and no mode switches.
  Status enterLongMode(const KvmVm& vm, const LongModeEntry& entry);
  // KVM_RUN until the guest exits to the VMM; EINTR (a signal) is retried.
  Result<VcpuExit> run();
  // KVM_GET_TSC_KHZ: the guest TSC's frequency.
  Result<std::uint64_t> tscKhz() const;
  unsigned id() const { return id_; }

 private:
  KvmVcpu(UniqueFd fd, Mapping run, unsigned id)
      : fd_(std::move(fd)), run_(std::move(run)), id_(id) {}

  UniqueFd fd_;
  Mapping run_;  // struct kvm_run, shared with the kernel
  unsigned id_ = 0;
};

// Whether the CPUID KVM offers guests has 1 GiB pages (CPUID 0x80000001 EDX.Page1GB); false
// when KVM reports no CPUID at all.
bool kvmOffers1GiBPages(const KvmVm& vm);

}  // namespace lazymig::sys
