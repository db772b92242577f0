// Bitmap and AtomicBitmapView at their edges: a size that is not a multiple of 64, the last
// word, a search that crosses words, words handed in from outside.
#include "base/bitmap.h"

#include <gtest/gtest.h>

#include <thread>

namespace lazymig {
namespace {

TEST(Bitmap, LayoutIsBitIModulo64OfWordIDividedBy64) {
  Bitmap b(130);
  ASSERT_EQ(b.words().size(), 3u);
  b.set(0);
  b.set(63);
  b.set(64);
  b.set(129);
  EXPECT_EQ(b.words()[0], 0x8000000000000001ull);
  EXPECT_EQ(b.words()[1], 1u);
  EXPECT_EQ(b.words()[2], 2u);
  EXPECT_TRUE(b.test(129) && b.test(64) && b.test(63) && b.test(0));
  EXPECT_FALSE(b.test(1) || b.test(65) || b.test(128));
  EXPECT_EQ(b.count(), 4u);
  b.clear(63);
  EXPECT_FALSE(b.test(63));
  EXPECT_EQ(b.count(), 3u);
}

TEST(Bitmap, SetAllLeavesBitsPastTheSizeClear) {
  for (std::uint64_t size : {0u, 1u, 63u, 64u, 65u, 127u, 128u, 1000u}) {
    Bitmap b(size, true);
    EXPECT_EQ(b.count(), size) << size;
    EXPECT_EQ(b.words().size(), Bitmap::wordsFor(size));
    if (size % 64 != 0) {
      EXPECT_EQ(b.words().back() >> (size % 64), 0u) << size;
    }
    EXPECT_EQ(b.findNextClear(0), size) << size;
    EXPECT_EQ(Bitmap(size).findNextSet(0), size) << size;
  }
}

TEST(Bitmap, FindNextCrossesWordsAndStopsAtTheSize) {
  Bitmap b(200);
  b.set(3);
  b.set(70);
  b.set(199);
  EXPECT_EQ(b.findNextSet(0), 3u);
  EXPECT_EQ(b.findNextSet(3), 3u);
  EXPECT_EQ(b.findNextSet(4), 70u);
  EXPECT_EQ(b.findNextSet(64), 70u);
  EXPECT_EQ(b.findNextSet(71), 199u);
  EXPECT_EQ(b.findNextSet(200), 200u);
  EXPECT_EQ(b.findNextSet(5000), 200u);

  Bitmap full(130, true);
  full.clear(2);
  full.clear(128);
  EXPECT_EQ(full.findNextClear(0), 2u);
  EXPECT_EQ(full.findNextClear(3), 128u);
  EXPECT_EQ(full.findNextClear(129), 130u) << "bits past the size never count as clear";
  std::uint64_t seen = 0;
  for (auto p = b.findNextSet(0); p < b.size(); p = b.findNextSet(p + 1)) ++seen;
  EXPECT_EQ(seen, b.count());
}

TEST(Bitmap, FromWordsPadsShortInputAndDropsBitsPastTheSize) {
  auto b = Bitmap::fromWords(70, {~0ull, ~0ull, ~0ull});
  EXPECT_EQ(b.words().size(), 2u);
  EXPECT_EQ(b.count(), 70u);
  EXPECT_EQ(b.words()[1], 0x3fu);
  auto short_input = Bitmap::fromWords(130, {1});
  EXPECT_EQ(short_input.words().size(), 3u);
  EXPECT_EQ(short_input.count(), 1u);
  Bitmap merged(130);
  merged.set(129);
  merged.merge(short_input);
  EXPECT_TRUE(merged.test(0) && merged.test(129));
  EXPECT_EQ(merged.count(), 2u);
  EXPECT_EQ(std::move(merged).takeWords().size(), 3u);
}

TEST(Bitmap, IntersectKeepsCommonBitsAndSubtractClearsTheOthers) {
  Bitmap a(130), b(130);
  for (auto bit : {0u, 64u, 65u, 129u}) a.set(bit);
  for (auto bit : {1u, 64u, 129u}) b.set(bit);
  Bitmap both = a;
  both.intersect(b);
  EXPECT_EQ(both.count(), 2u);
  EXPECT_TRUE(both.test(64) && both.test(129));
  Bitmap only_a = a;
  only_a.subtract(b);
  EXPECT_EQ(only_a.count(), 2u);
  EXPECT_TRUE(only_a.test(0) && only_a.test(65));
  Bitmap cut = a;
  cut.intersect(Bitmap(64, true));
  EXPECT_EQ(cut.count(), 1u) << "words past the other's are cleared";
}

TEST(AtomicBitmapView, SameLayoutOverWordsItDoesNotOwn) {
  std::vector<std::uint64_t> words(Bitmap::wordsFor(100), ~0ull);
  AtomicBitmapView v(words.data(), 100);
  v.setAll();
  EXPECT_EQ(words[1], (1ull << 36) - 1) << "bits past the size cleared";
  EXPECT_EQ(v.count(), 100u);
  v.clear(99);
  v.clear(0);
  EXPECT_FALSE(v.test(99));
  EXPECT_FALSE(v.test(0));
  EXPECT_TRUE(v.test(64));
  EXPECT_EQ(v.count(), 98u);
  v.set(0);
  EXPECT_EQ(v.takeWord(0), ~0ull);
  EXPECT_EQ(words[0], 0u);
  EXPECT_EQ(v.count(), 35u);
}

TEST(AtomicBitmapView, ConcurrentSettersLoseNoBit) {
  std::vector<std::uint64_t> words(Bitmap::wordsFor(4096), 0);
  AtomicBitmapView v(words.data(), 4096);
  std::thread even([&] {
    for (std::uint64_t i = 0; i < 4096; i += 2) v.set(i);
  });
  std::thread odd([&] {
    for (std::uint64_t i = 1; i < 4096; i += 2) v.set(i);
  });
  even.join();
  odd.join();
  EXPECT_EQ(v.count(), 4096u);
}

}  // namespace
}  // namespace lazymig
