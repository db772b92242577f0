#include "agent/destination/population/guest_layout.h"

#include <algorithm>

namespace lazymig::agent {

Result<GuestLayout> GuestLayout::fromMappings(
    const std::vector<vmm::GuestRegionMapping>& mappings) {
  if (mappings.empty()) return fail(Errc::kInvalidArgument, "guest layout", "no regions");
  GuestLayout out;
  out.page_size_ = mappings.front().page_size;
  for (const auto& m : mappings) {
    if (m.page_size != out.page_size_ || m.offset % m.page_size != 0 || m.size % m.page_size != 0) {
      return fail(Errc::kInvalidArgument, "guest layout", "regions disagree on the page size");
    }
    out.by_page_.push_back(Region{HostAddr{m.base_host_virt_addr}, m.offset / m.page_size,
                                  m.size / m.page_size, m.gpa_start});
  }
  std::sort(out.by_page_.begin(), out.by_page_.end(),
            [](const Region& a, const Region& b) { return a.first_page < b.first_page; });
  std::uint64_t next = 0;
  for (const Region& r : out.by_page_) {
    if (r.first_page != next) {
      return fail(Errc::kInvalidArgument, "guest layout",
                  "region offsets leave a hole at page " + std::to_string(next));
    }
    next += r.pages;
  }
  out.page_count_ = next;
  out.by_host_ = out.by_page_;
  std::sort(out.by_host_.begin(), out.by_host_.end(),
            [](const Region& a, const Region& b) { return a.host_start < b.host_start; });
  return out;
}

std::optional<PageIndex> GuestLayout::pageOf(HostAddr addr) const {
  auto it = std::upper_bound(by_host_.begin(), by_host_.end(), addr,
                             [](HostAddr a, const Region& r) { return a < r.host_start; });
  if (it == by_host_.begin()) return std::nullopt;
  --it;
  std::uint64_t delta = addr.value - it->host_start.value;
  if (delta >= it->pages * page_size_) return std::nullopt;
  return PageIndex{it->first_page + delta / page_size_};
}

std::optional<PageIndex> GuestLayout::pageOfGpa(std::uint64_t gpa) const {
  for (const Region& r : by_page_) {
    if (r.gpa_start && gpa >= *r.gpa_start && gpa - *r.gpa_start < r.pages * page_size_) {
      return PageIndex{r.first_page + (gpa - *r.gpa_start) / page_size_};
    }
  }
  return std::nullopt;
}

std::optional<PageIndex> GuestLayout::pageOfOffset(std::uint64_t offset) const {
  if (offset / page_size_ >= page_count_) return std::nullopt;
  return PageIndex{offset / page_size_};
}

HostAddr GuestLayout::hostAddrOf(PageIndex page) const {
  const Region& r = regionOf(page);
  return HostAddr{r.host_start.value + (page.value - r.first_page) * page_size_};
}

const GuestLayout::Region& GuestLayout::regionOf(PageIndex page) const {
  auto it = std::upper_bound(by_page_.begin(), by_page_.end(), page.value,
                             [](std::uint64_t p, const Region& r) { return p < r.first_page; });
  return *(it - 1);
}

}  // namespace lazymig::agent
