// Where everything lives in the KVM test VM's guest physical memory: the migrated guest memory
// first, the userfault bitmap after it, and the control memory -- page tables, the guest
// program, each vCPU's parameter block and latency log -- in a memslot of its own above both,
// so that nothing the VMM sets up is ever faulted on, migrated or verified as guest data.
#pragma once

#include <cstdint>
#include <span>

#include "base/error.h"
#include "sys/mapping.h"
#include "testvm/guest_abi.h"

namespace lazymig::testvm {

struct GuestLayoutSpec {
  std::uint64_t mem_base = 0;      // guest physical address of guest memory
  std::uint64_t mem_bytes = 0;     // guest memory size
  std::uint64_t bitmap_bytes = 0;  // userfault bitmap; 0: none
  unsigned vcpus = 1;
  std::uint64_t accesses = 0;  // per vCPU: sizes the latency logs
  bool gib_pages = false;      // map with 1 GiB pages (the vCPU's CPUID must offer them)
};

class ControlMemory {
 public:
  // Lays the control memory out, maps it and writes the identity page tables (reaching every
  // byte up to its own end) and the guest program into it.
  static Result<ControlMemory> create(const GuestLayoutSpec& spec);

  std::uint64_t gpa() const { return gpa_; }
  const sys::Mapping& mapping() const { return mapping_; }
  std::uint64_t bitmapGpa() const { return bitmap_gpa_; }
  std::uint64_t cr3() const { return gpa_ + kPml4; }
  std::uint64_t entry() const { return gpa_ + kCode; }
  std::uint64_t paramsGpa(unsigned vcpu) const { return gpa_ + params_ + vcpu * 4096ull; }
  GuestParams& params(unsigned vcpu) const;
  std::uint64_t latencyLogGpa(unsigned vcpu) const { return gpa_ + logs_ + vcpu * log_bytes_; }
  std::span<const std::uint64_t> latencyLog(unsigned vcpu, std::uint64_t accesses) const;

 private:
  static constexpr std::uint64_t kCode = 0;
  static constexpr std::uint64_t kPml4 = 64 * 1024;
  static constexpr std::uint64_t kPdpt = kPml4 + 4096;
  static constexpr std::uint64_t kPageDirectories = kPdpt + 4096;

  void writePageTables(std::uint64_t gib, bool gib_pages);

  sys::Mapping mapping_;
  std::uint64_t gpa_ = 0;
  std::uint64_t bitmap_gpa_ = 0;
  std::uint64_t params_ = 0;  // offsets in the control memory
  std::uint64_t logs_ = 0;
  std::uint64_t log_bytes_ = 0;
};

}  // namespace lazymig::testvm
