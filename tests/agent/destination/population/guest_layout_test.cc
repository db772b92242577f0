#include "agent/destination/population/guest_layout.h"

#include <gtest/gtest.h>

namespace lazymig::agent {

TEST(GuestLayout, MapsPagesAcrossRegionsWithGaps) {
  // Two regions, listed out of order, with a hole between them in the VMM's address space.
  std::vector<vmm::GuestRegionMapping> m = {
      {.base_host_virt_addr = 0x100000, .size = 3 * 4096, .offset = 2 * 4096, .page_size = 4096},
      {.base_host_virt_addr = 0x800000, .size = 2 * 4096, .offset = 0, .page_size = 4096},
  };
  auto l = GuestLayout::fromMappings(m);
  ASSERT_TRUE(l) << l.error().message();
  EXPECT_EQ(l->pageCount(), 5u);
  EXPECT_EQ(l->pageOf(HostAddr{0x800000})->value, 0u);
  EXPECT_EQ(l->pageOf(HostAddr{0x801fff})->value, 1u);
  EXPECT_EQ(l->pageOf(HostAddr{0x100000})->value, 2u);
  EXPECT_EQ(l->pageOf(HostAddr{0x102abc})->value, 4u);
  EXPECT_FALSE(l->pageOf(HostAddr{0x103000}));
  EXPECT_FALSE(l->pageOf(HostAddr{0xfffff}));
  EXPECT_EQ(l->hostAddrOf(PageIndex{3}).value, 0x101000u);

  std::vector<std::tuple<std::uint64_t, std::uint64_t, std::uint64_t>> runs;
  l->forEachHostRun(PageIndex{1}, 3, [&](PageIndex p, std::uint64_t n, HostAddr a) {
    runs.emplace_back(p.value, n, a.value);
  });
  ASSERT_EQ(runs.size(), 2u);
  EXPECT_EQ(runs[0], std::make_tuple(1u, 1u, 0x801000u));
  EXPECT_EQ(runs[1], std::make_tuple(2u, 2u, 0x100000u));
}

TEST(GuestLayout, RejectsHoles) {
  std::vector<vmm::GuestRegionMapping> m = {
      {.base_host_virt_addr = 0x100000, .size = 4096, .offset = 8192, .page_size = 4096}};
  EXPECT_FALSE(GuestLayout::fromMappings(m));
}

}  // namespace lazymig::agent
