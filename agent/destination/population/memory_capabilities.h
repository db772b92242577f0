// What this kernel can do for each kind of guest memory, found out by trying it on memory of
// the agent's own (never on the VMM's), once per agent: userfaultfd minor faults on shared
// memory and hugetlbfs, and, where /dev/kvm is usable, mmap, write() and uffd registration on
// a guest_memfd. The handshake then picks the population path the memory needs, or refuses
// naming the kernel feature that is missing, and the migration status shows both.
#pragma once

#include <string>

#include <nlohmann/json.hpp>

#include "agent/destination/population/page_installer.h"
#include "base/error.h"
#include "vmm/handshake.h"

namespace lazymig::agent {

struct Capability {
  enum class Answer { kYes, kNo, kUnknown };
  Answer answer = Answer::kUnknown;
  std::string detail;  // how it was found out, or why it could not be
  bool yes() const { return answer == Answer::kYes; }
};

struct MemoryCapabilities {
  Capability uffd_minor_shmem;      // UFFD_FEATURE_MINOR_SHMEM + a MINOR registration on a memfd
  Capability uffd_minor_hugetlbfs;  // the same on a hugetlbfs memfd
  Capability guest_memfd_mmap;      // GUEST_MEMFD_FLAG_MMAP: a guest_memfd maps read/write
  Capability guest_memfd_write;     // write() population of a guest_memfd
  Capability uffd_on_guest_memfd;   // UFFDIO_REGISTER on a guest_memfd mapping
  nlohmann::json toJson() const;
};

// Probed on first use, then cached for the agent's lifetime (a few milliseconds).
const MemoryCapabilities& kernelCapabilities();

// nlohmann::json's default constructor is not noexcept, though a null json allocates nothing.
// NOLINTNEXTLINE(bugprone-exception-escape)
struct PopulationChoice {
  PopulationPath path = PopulationPath::kUffdCopy;
  std::string backing;  // what the memory fd is (guest_memfd, memfd, hugetlbfs), if one came
  nlohmann::json details;
};

// Picks how pages get into the guest for the memory this handshake handed over, or refuses
// with an error that names the missing kernel feature.
Result<PopulationChoice> choosePopulation(const vmm::Handshake& handshake,
                                          const MemoryCapabilities& caps);

}  // namespace lazymig::agent
