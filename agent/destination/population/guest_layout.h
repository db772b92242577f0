// Where each guest page lives in the VMM's address space. Page indexes count pages of guest
// memory in the order of the snapshot memory file (region offsets), which is also the
// order the source serves them in; host addresses are the VMM's, for uffd ioctls.
#pragma once

#include <cstdint>
#include <optional>
#include <vector>

#include "base/error.h"
#include "base/units.h"
#include "vmm/handshake.h"

namespace lazymig::agent {

class GuestLayout {
 public:
  struct Region {
    HostAddr host_start;
    std::uint64_t first_page = 0;
    std::uint64_t pages = 0;
    std::optional<std::uint64_t> gpa_start;  // guest physical address (guest_memfd handshake)
  };

  // The regions must already be validated (vmm::parseMappings does).
  static Result<GuestLayout> fromMappings(const std::vector<vmm::GuestRegionMapping>& mappings);

  std::uint64_t pageSize() const { return page_size_; }
  std::uint64_t pageCount() const { return page_count_; }
  Bytes totalBytes() const { return Bytes{page_count_ * page_size_}; }
  const std::vector<Region>& regions() const { return by_page_; }

  std::optional<PageIndex> pageOf(HostAddr addr) const;
  // A FaultRequest's page: by guest physical address when the regions carry gpa_start, else
  // by byte offset in guest memory. Nothing when it is outside every region.
  std::optional<PageIndex> pageOfGpa(std::uint64_t gpa) const;
  std::optional<PageIndex> pageOfOffset(std::uint64_t offset) const;
  HostAddr hostAddrOf(PageIndex page) const;

  // Calls fn(first, count, host_addr) for each piece of [first, first+count) that is
  // contiguous in the VMM's address space (a run never crosses a region boundary).
  template <class Fn>
  void forEachHostRun(PageIndex first, std::uint64_t count, Fn&& fn) const {
    while (count > 0) {
      const Region& r = regionOf(first);
      std::uint64_t in_region = r.first_page + r.pages - first.value;
      std::uint64_t n = count < in_region ? count : in_region;
      fn(first, n, HostAddr{r.host_start.value + (first.value - r.first_page) * page_size_});
      first = first + n;
      count -= n;
    }
  }

 private:
  const Region& regionOf(PageIndex page) const;

  std::uint64_t page_size_ = 4096;
  std::uint64_t page_count_ = 0;
  std::vector<Region> by_page_;  // sorted by first_page
  std::vector<Region> by_host_;  // sorted by host_start
};

}  // namespace lazymig::agent
