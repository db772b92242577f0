// The stand-in VMM's guest memory: regions of anonymous or memfd-backed memory, laid out the
// way Firecracker describes them in its handshake.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "base/error.h"
#include "sys/mapping.h"
#include "sys/unique_fd.h"
#include "vmm/handshake.h"

namespace lazymig::testvm {

enum class MemoryKind { kAnonymous, kMemfd };

class GuestMemory {
 public:
  static Result<GuestMemory> create(MemoryKind kind, std::uint64_t bytes, unsigned regions);

  MemoryKind kind() const { return kind_; }
  std::uint64_t pageCount() const { return bytes_ / 4096; }
  std::uint64_t bytes() const { return bytes_; }
  // The guest page's bytes in this process.
  std::byte* page(std::uint64_t index) const;
  std::vector<vmm::GuestRegionMapping> mappings() const;
  const sys::UniqueFd& memfd() const { return memfd_; }
  // Whether pages [first, first+count) lie in one region (one contiguous host range).
  bool sameRegion(std::uint64_t first, std::uint64_t count) const;
  // Discards pages as a balloon device does (MADV_DONTNEED); they read as zeros afterwards.
  Status discard(std::uint64_t first, std::uint64_t count) const;

 private:
  struct Region {
    sys::Mapping mapping;
    std::uint64_t first_page;
    std::uint64_t pages;
  };
  MemoryKind kind_ = MemoryKind::kAnonymous;
  std::uint64_t bytes_ = 0;
  sys::UniqueFd memfd_;
  std::vector<Region> regions_;
  std::vector<sys::Mapping> guards_;
};

}  // namespace lazymig::testvm
