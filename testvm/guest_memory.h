// The stand-in VMM's guest memory: regions of anonymous, memfd, hugetlbfs or guest_memfd
// memory, laid out the way Firecracker describes them in its handshake.
#pragma once

#include <cstdint>
#include <optional>
#include <string>
#include <vector>

#include "base/error.h"
#include "sys/kvm.h"
#include "sys/mapping.h"
#include "sys/unique_fd.h"
#include "vmm/handshake.h"

namespace lazymig::testvm {

enum class MemoryKind {
  kAnonymous,      // anon: MAP_PRIVATE | MAP_ANONYMOUS
  kMemfd,          // memfd: a memfd mapped MAP_SHARED, registered MISSING
  kMemfdMinor,     // memfd-minor: the same memfd, handed to the handler, registered MISSING|MINOR
  kGuestMemfd,     // guest_memfd: a KVM guest_memfd (or a memfd standing in) mapped MAP_SHARED
  kHugetlb,        // hugetlb: anonymous private MAP_HUGETLB, 2 MiB pages
  kHugetlbShared,  // hugetlb-shared: a MFD_HUGETLB memfd mapped MAP_SHARED, 2 MiB pages
  kHugetlbMinor,   // hugetlb-minor: the same, handed to the handler, registered MISSING|MINOR
};

// "anon|memfd|memfd-minor|guest_memfd|hugetlb|hugetlb-shared|hugetlb-minor", for usage texts.
inline constexpr const char* kMemoryKindNames =
    "anon|memfd|memfd-minor|guest_memfd|hugetlb|hugetlb-shared|hugetlb-minor";
// Whether the destination hands its memory fd to the handler and registers MISSING|MINOR.
bool isMinorMode(MemoryKind kind);
Result<MemoryKind> parseMemoryKind(const std::string& name);
const char* memoryKindName(MemoryKind kind);
bool isHugetlb(MemoryKind kind);
// Whether the memory lives in a file descriptor (all kinds but anon and hugetlb).
bool hasMemoryFd(MemoryKind kind);
// The page size the handshake describes: 2 MiB for hugetlb kinds, else 4 KiB.
std::uint64_t handshakePageSize(MemoryKind kind);

// Where guest_memfd regions start in guest physical memory (gpa_start = this + offset).
constexpr std::uint64_t kGuestMemfdGpaBase = 0x1'0000'0000;

struct GuestMemoryOptions {
  // guest_memfd: fail rather than let a memfd stand in when KVM cannot give a guest_memfd.
  bool require_kvm = false;
  // guest_memfd: let a memfd stand in even where KVM can give a guest_memfd. A stand-in takes
  // uffd registration, which a kernel refusing it on a guest_memfd cannot offer otherwise.
  bool memfd_standin = false;
};

class GuestMemory {
 public:
  static Result<GuestMemory> create(MemoryKind kind, std::uint64_t bytes, unsigned regions,
                                    const GuestMemoryOptions& options = {});

  MemoryKind kind() const { return kind_; }
  // Counted in 4 KiB pages (kPageSize), whatever the handshake's page size.
  std::uint64_t pageCount() const { return bytes_ / 4096; }
  std::uint64_t bytes() const { return bytes_; }
  // The handshake's page size in bytes: regions' sizes, addresses and offsets are multiples.
  std::uint64_t pageSize() const { return handshakePageSize(kind_); }
  // The 4 KiB guest page's bytes in this process.
  std::byte* page(std::uint64_t index) const;
  // guest_memfd regions carry gpa_start and is_guest_memfd.
  std::vector<vmm::GuestRegionMapping> mappings() const;
  // The memory fd (memfd, hugetlbfs memfd, guest_memfd or its stand-in); invalid for anon kinds.
  const sys::UniqueFd& memfd() const { return memfd_; }
  // guest_memfd only: "kvm" for a real guest_memfd, "memfd-standin" otherwise; empty for others.
  const std::string& guestMemfdBacking() const { return backing_; }
  // The VM the guest_memfd belongs to (a guest_memfd memslot must be on it); null otherwise.
  const sys::KvmVm* kvmVm() const { return kvm_ ? &*kvm_ : nullptr; }
  // guest_memfd with a memfd standing in: why KVM could not give a guest_memfd.
  const std::string& standInReason() const { return standin_reason_; }
  // The guest physical address of the 4 KiB guest page (guest_memfd regions only).
  std::optional<std::uint64_t> gpaOf(std::uint64_t index) const;
  // Whether pages [first, first+count) lie in one region (one contiguous host range).
  bool sameRegion(std::uint64_t first, std::uint64_t count) const;
  // Discards pages as a balloon device does (MADV_DONTNEED); they read as zeros afterwards.
  Status discard(std::uint64_t first, std::uint64_t count) const;

 private:
  struct Region {
    sys::Mapping mapping;
    std::uint64_t first_page;  // 4 KiB pages
    std::uint64_t pages;       // 4 KiB pages
  };
  Status createGuestMemfd(const GuestMemoryOptions& options);

  MemoryKind kind_ = MemoryKind::kAnonymous;
  std::uint64_t bytes_ = 0;
  std::optional<sys::KvmVm> kvm_;
  sys::UniqueFd memfd_;
  std::string backing_;
  std::string standin_reason_;
  std::vector<Region> regions_;
  std::vector<sys::Mapping> guards_;
};

}  // namespace lazymig::testvm
