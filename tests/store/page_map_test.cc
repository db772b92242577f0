#include "store/page_map.h"

#include <gtest/gtest.h>

#include <thread>

namespace lazymig::store {

TEST(PageMap, StartsMissing) {
  PageMap m(100);
  EXPECT_EQ(m.pageCount(), 100u);
  EXPECT_EQ(m.doneCount(), 0u);
  EXPECT_EQ(m.state(PageIndex{5}), PageState::kMissing);
  EXPECT_FALSE(m.complete());
}

TEST(PageMap, RequestOnlyFromMissing) {
  PageMap m(10);
  EXPECT_TRUE(m.tryMarkRequested(PageIndex{3}));
  EXPECT_FALSE(m.tryMarkRequested(PageIndex{3}));
  m.clearRequested(PageIndex{3});
  EXPECT_EQ(m.state(PageIndex{3}), PageState::kMissing);
  EXPECT_TRUE(m.markInstalled(PageIndex{3}));
  EXPECT_FALSE(m.tryMarkRequested(PageIndex{3}));
  m.clearRequested(PageIndex{3});  // must not demote an installed page
  EXPECT_EQ(m.state(PageIndex{3}), PageState::kInstalled);
}

TEST(PageMap, DoneCountsEachPageOnce) {
  PageMap m(4);
  EXPECT_TRUE(m.markInstalled(PageIndex{0}));
  EXPECT_FALSE(m.markInstalled(PageIndex{0}));
  EXPECT_TRUE(m.markRemoved(PageIndex{1}));
  EXPECT_FALSE(m.markInstalled(PageIndex{1}));  // zero-filled after removal: still one page
  EXPECT_EQ(m.doneCount(), 2u);
  m.markInstalled(PageIndex{2});
  m.markInstalled(PageIndex{3});
  EXPECT_TRUE(m.complete());
}

TEST(PageMap, DirtyChunksCarryDoneBitsAndClear) {
  PageMap m(kPagesPerChunk * 3 + 10);
  m.markInstalled(PageIndex{1});
  m.markInstalled(PageIndex{kPagesPerChunk * 3 + 9});
  auto chunks = m.takeDirtyChunks();
  ASSERT_EQ(chunks.size(), 2u);
  EXPECT_EQ(chunks[0].chunk_index, 0u);
  EXPECT_EQ(chunks[0].words[0], 2u);
  EXPECT_EQ(chunks[1].chunk_index, 3u);
  EXPECT_EQ(chunks[1].words[0], std::uint64_t{1} << 9);
  EXPECT_TRUE(m.takeDirtyChunks().empty());
}

TEST(PageMap, RestoreMarksInstalledWithoutDirtying) {
  PageMap m(130);
  std::vector<std::uint64_t> bitmap{0b101, 0, 1};
  m.restoreInstalled(bitmap);
  EXPECT_EQ(m.doneCount(), 3u);
  EXPECT_EQ(m.state(PageIndex{2}), PageState::kInstalled);
  EXPECT_EQ(m.state(PageIndex{128}), PageState::kInstalled);
  EXPECT_TRUE(m.takeDirtyChunks().empty());
  EXPECT_EQ(m.doneBitmap(), bitmap);
}

TEST(PageMap, ConcurrentInstallsCountExactlyOnce) {
  constexpr std::uint64_t kPages = 50000;
  PageMap m(kPages);
  std::atomic<std::uint64_t> wins{0};
  std::vector<std::thread> threads;
  for (int t = 0; t < 4; ++t) {
    threads.emplace_back([&] {
      for (std::uint64_t p = 0; p < kPages; ++p) {
        if (m.markInstalled(PageIndex{p})) wins.fetch_add(1);
      }
    });
  }
  for (auto& th : threads) th.join();
  EXPECT_EQ(wins.load(), kPages);
  EXPECT_TRUE(m.complete());
}

}  // namespace lazymig::store
