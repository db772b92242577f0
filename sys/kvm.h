// A KVM virtual machine, owned for what lazymig's test VM needs of it: guest_memfd files (see
// ../shared/PROTOCOLS.md section 2), memslots and vCPUs (sys/kvm_vcpu.h) that run a guest
// program on the VMM's guest memory.
#pragma once

#include <cstdint>

#include "base/error.h"
#include "base/units.h"
#include "sys/unique_fd.h"

namespace lazymig::sys {

// KVM_CREATE_GUEST_MEMFD flags and the capabilities that report them. Debian 12's kernel
// headers predate all four, so they are defined here with the kernel's values.
constexpr std::uint64_t kGuestMemfdFlagMmap = 1;        // GUEST_MEMFD_FLAG_MMAP: mmap-able
constexpr std::uint64_t kGuestMemfdFlagInitShared = 2;  // GUEST_MEMFD_FLAG_INIT_SHARED
constexpr unsigned long kCapGuestMemfd = 234;           // KVM_CAP_GUEST_MEMFD
constexpr unsigned long kCapGuestMemfdFlags = 244;      // KVM_CAP_GUEST_MEMFD_FLAGS: the flags

class KvmVm {
 public:
  // Opens /dev/kvm and creates a VM of the default type (0). The error names /dev/kvm and the
  // errno, and says so when the host has no KVM at all.
  static Result<KvmVm> open();

  // KVM_CHECK_EXTENSION on the VM: 0 when unsupported, else the capability's value.
  Result<int> checkExtension(unsigned long cap) const;
  // KVM_CREATE_GUEST_MEMFD of `size` bytes (a multiple of the host page size).
  Result<UniqueFd> createGuestMemfd(Bytes size, std::uint64_t flags) const;

  // KVM_SET_USER_MEMORY_REGION: guest physical [gpa, gpa + size) is the VMM's memory at host.
  Status setMemslot(std::uint32_t slot, std::uint64_t gpa, Bytes size, HostAddr host) const;
  // KVM_SET_USER_MEMORY_REGION2 with KVM_MEM_GUEST_MEMFD: the slot's memory is the guest_memfd
  // at `offset` (host is the VMM's shared mapping of it). Fails where the kernel refuses a
  // guest_memfd memslot for this VM.
  Status setGuestMemfdMemslot(std::uint32_t slot, std::uint64_t gpa, Bytes size, HostAddr host,
                              int guest_memfd, GuestOffset offset) const;
  // KVM_CREATE_VCPU; the returned fd is the vCPU's (see KvmVcpu).
  Result<UniqueFd> createVcpuFd(unsigned id) const;
  // KVM_GET_VCPU_MMAP_SIZE: the size of each vCPU's kvm_run mapping.
  Result<std::size_t> vcpuMmapSize() const;
  // /dev/kvm itself, for system ioctls such as KVM_GET_SUPPORTED_CPUID.
  int systemFd() const { return kvm_.get(); }

 private:
  KvmVm(UniqueFd kvm, UniqueFd vm) : kvm_(std::move(kvm)), vm_(std::move(vm)) {}

  UniqueFd kvm_;  // /dev/kvm
  UniqueFd vm_;   // the VM; a guest_memfd keeps it alive on its own once created
};

// A guest_memfd of `size` bytes that a VMM can mmap and use as ordinary shared memory (MMAP |
// INIT_SHARED), on a VM of its own that the fd keeps alive: the guest memory of a stand-in VMM
// or a benchmark, with nothing else of KVM's needed.
Result<UniqueFd> createMappableGuestMemfd(Bytes size);

// Whether fd is a guest_memfd (its /proc/self/fd link reads "anon_inode:[kvm-gmem]").
bool isGuestMemfd(int fd);

}  // namespace lazymig::sys
