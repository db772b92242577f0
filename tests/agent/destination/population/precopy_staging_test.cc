// PrecopyStaging on its own: what is staged, replaced, dropped as stale and offered for install,
// before and after the switch.
#include "agent/destination/population/precopy_staging.h"

#include <gtest/gtest.h>

#include <cstring>
#include <vector>

namespace lazymig::agent {
namespace {

constexpr std::uint64_t kPage = 4096;
constexpr std::uint64_t kPages = 130;  // three bitmap words, the last one partial

std::vector<std::byte> pagesOf(std::uint64_t count, int fill) {
  return std::vector<std::byte>(count * kPage, static_cast<std::byte>(fill));
}

std::vector<std::uint64_t> wordsNaming(std::initializer_list<std::uint64_t> pages) {
  std::vector<std::uint64_t> words(Bitmap::wordsFor(kPages), 0);
  for (auto p : pages) words[p / 64] |= Bitmap::maskOf(p);
  return words;
}

TEST(PrecopyStaging, NothingIsInstallableBeforeTheSwitchAndStalePagesNeverAre) {
  PrecopyStaging s;
  EXPECT_FALSE(s.sized());
  ASSERT_TRUE(s.size(kPage, kPages));
  EXPECT_TRUE(s.size(kPage, kPages)) << "the same layout again is fine";
  EXPECT_FALSE(s.size(kPage, kPages + 1)) << "another layout is not";

  auto round1 = pagesOf(kPages, 0x11);
  s.stage(PageIndex{0}, kPages, round1.data());
  s.stage(PageIndex{5}, 2, nullptr);  // zero pages in the same round
  auto round2 = pagesOf(3, 0x22);
  s.stage(PageIndex{64}, 3, round2.data());
  EXPECT_EQ(s.stagedPages(), kPages);
  EXPECT_FALSE(s.installable(PageIndex{0})) << "before the switch nothing may be installed";

  EXPECT_EQ(s.dropStale(0, wordsNaming({1, 65, 129})), 3u);
  EXPECT_EQ(s.dropStale(64, std::vector<std::uint64_t>{Bitmap::maskOf(1)}), 0u)
      << "already dropped";
  s.markSwitched();
  EXPECT_EQ(s.stagedPages(), kPages - 3);
  EXPECT_EQ(s.staleDropped(), 3u);
  for (std::uint64_t stale : {1, 65, 129}) EXPECT_FALSE(s.installable(PageIndex{stale})) << stale;
  auto page0 = s.installable(PageIndex{0});
  ASSERT_TRUE(page0);
  EXPECT_EQ(page0->data[0], std::byte{0x11});
  auto page64 = s.installable(PageIndex{64});
  ASSERT_TRUE(page64);
  EXPECT_EQ(page64->data[kPage - 1], std::byte{0x22}) << "the newer round's copy";
  auto zero = s.installable(PageIndex{5});
  ASSERT_TRUE(zero);
  EXPECT_EQ(zero->data, nullptr);

  // After the switch a staged page keeps its copy (a fault may be reading it); a page staged
  // for the first time (post-copy, before the VMM) is taken.
  auto late = pagesOf(2, 0x33);
  s.stage(PageIndex{0}, 2, late.data());
  EXPECT_EQ(s.installable(PageIndex{0})->data[0], std::byte{0x11});
  EXPECT_EQ(s.installable(PageIndex{1})->data[0], std::byte{0x33});
  EXPECT_EQ(s.dropStale(0, wordsNaming({0})), 0u) << "no stale set after the switch";
}

TEST(PrecopyStaging, RunsSplitAtGapsAndAtZeroPagesAndTheResumeBitmapHasEveryStagedPage) {
  PrecopyStaging s;
  ASSERT_TRUE(s.size(kPage, kPages));
  auto data = pagesOf(10, 0x44);
  s.stage(PageIndex{2}, 4, data.data());  // 2..5 data
  s.stage(PageIndex{6}, 2, nullptr);      // 6..7 zero
  s.stage(PageIndex{70}, 10, data.data());
  s.markSwitched();
  auto r = s.nextRun(0, 100);
  EXPECT_EQ(r.first, 2u);
  EXPECT_EQ(r.count, 4u);
  EXPECT_NE(r.data, nullptr);
  r = s.nextRun(6, 100);
  EXPECT_EQ(r.first, 6u);
  EXPECT_EQ(r.count, 2u);
  EXPECT_EQ(r.data, nullptr);
  r = s.nextRun(8, 3);
  EXPECT_EQ(r.first, 70u);
  EXPECT_EQ(r.count, 3u) << "at most max pages";
  EXPECT_EQ(s.nextRun(80, 100).count, 0u);

  std::vector<std::uint64_t> words(Bitmap::wordsFor(kPages), 0);
  words[2] = 1;  // an installed page stays in
  s.addStagedTo(words);
  auto bitmap = Bitmap::fromWords(kPages, words);
  EXPECT_EQ(bitmap.count(), 4u + 2u + 10u + 1u);
  EXPECT_TRUE(bitmap.test(128));
  EXPECT_TRUE(bitmap.test(7));
}

}  // namespace
}  // namespace lazymig::agent
