// The destination VMM's side of userfaultfd, per memory kind: the features it asks for, how
// it registers guest memory, and what it does when the kernel refuses (guest_memfd).
#pragma once

#include <cstdint>

#include "base/error.h"
#include "sys/uffd.h"
#include "testvm/guest_memory.h"

namespace lazymig::testvm {

std::uint64_t uffdFeatures(MemoryKind kind);
sys::RegisterMode registerMode(MemoryKind kind);
// Registers every region with the uffd. On guest_memfd a refusal is expected (a real
// guest_memfd mapping takes no uffd on kernels without the KVM userfault work): undo what was
// registered, say so, and leave the vCPUs to the FaultRequest path. Returns whether registered;
// any other refusal is an error.
Result<bool> registerRegions(const sys::Uffd& uffd, const GuestMemory& mem);

}  // namespace lazymig::testvm
