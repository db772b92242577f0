// A KVM virtual machine, owned only for what lazymig needs of it: creating guest_memfd files
// (see ../shared/PROTOCOLS.md section 2). No vCPUs and no memslots: a stand-in VMM maps the
// guest_memfd into its own address space and plays the vCPUs' part itself.
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
