#include "testvm/guest_memory.h"

#include "sys/memory_fd.h"

namespace lazymig::testvm {

Result<GuestMemory> GuestMemory::create(MemoryKind kind, std::uint64_t bytes, unsigned regions) {
  if (bytes == 0 || bytes % 4096 != 0) {
    return fail(Errc::kInvalidArgument, "--size", "must be a non-zero multiple of 4096");
  }
  std::uint64_t pages = bytes / 4096;
  if (regions == 0 || regions > pages) {
    return fail(Errc::kInvalidArgument, "--regions", "must be from 1 to the number of pages");
  }
  GuestMemory g;
  g.kind_ = kind;
  g.bytes_ = bytes;
  if (kind == MemoryKind::kMemfd) {
    auto fd = sys::createMemfd("lazymig-testvm-guest", Bytes{bytes});
    if (!fd) return std::unexpected(fd.error());
    g.memfd_ = std::move(*fd);
  }
  std::uint64_t first = 0;
  for (unsigned r = 0; r < regions; ++r) {
    std::uint64_t n = r + 1 == regions ? pages - first : pages / regions;
    Result<sys::Mapping> m =
        kind == MemoryKind::kMemfd
            ? sys::Mapping::ofFd(g.memfd_.get(), Bytes{n * 4096}, GuestOffset{first * 4096},
                                 PROT_READ | PROT_WRITE, MAP_SHARED)
            : sys::Mapping::anonymous(Bytes{n * 4096});
    if (!m) return std::unexpected(m.error());
    g.regions_.push_back(Region{std::move(*m), first, n});
    // A PROT_NONE page between regions keeps their host ranges apart, as a VMM's are.
    auto guard =
        sys::Mapping::ofFd(-1, Bytes{4096}, GuestOffset{0}, PROT_NONE, MAP_PRIVATE | MAP_ANONYMOUS);
    if (guard) g.guards_.push_back(std::move(*guard));
    first += n;
  }
  return g;
}

std::byte* GuestMemory::page(std::uint64_t index) const {
  for (const auto& r : regions_) {
    if (index >= r.first_page && index < r.first_page + r.pages) {
      return r.mapping.data() + (index - r.first_page) * 4096;
    }
  }
  return nullptr;
}

bool GuestMemory::sameRegion(std::uint64_t first, std::uint64_t count) const {
  for (const auto& r : regions_) {
    if (first >= r.first_page && first < r.first_page + r.pages)
      return first + count <= r.first_page + r.pages;
  }
  return false;
}

Status GuestMemory::discard(std::uint64_t first, std::uint64_t count) const {
  for (const auto& r : regions_) {
    if (first >= r.first_page && first + count <= r.first_page + r.pages) {
      return r.mapping.advise(MADV_DONTNEED, (first - r.first_page) * 4096, count * 4096);
    }
  }
  return fail(Errc::kInvalidArgument, "discard", "range crosses a region boundary");
}

std::vector<vmm::GuestRegionMapping> GuestMemory::mappings() const {
  std::vector<vmm::GuestRegionMapping> out;
  for (const auto& r : regions_) {
    out.push_back({.base_host_virt_addr = r.mapping.address().value,
                   .size = r.pages * 4096,
                   .offset = r.first_page * 4096,
                   .page_size = 4096});
  }
  return out;
}

}  // namespace lazymig::testvm
