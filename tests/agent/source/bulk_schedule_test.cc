#include "agent/source/bulk_schedule.h"

#include <gtest/gtest.h>

#include <set>

namespace lazymig::agent {

std::vector<PageRun> drain(BulkSchedule& s, std::uint64_t batch) {
  std::vector<PageRun> out;
  while (auto r = s.next(batch)) out.push_back(*r);
  return out;
}

TEST(BulkSchedule, SendsEveryPageOnceInAscendingRuns) {
  BulkSchedule s(1000);
  auto runs = drain(s, 64);
  std::uint64_t expect = 0;
  for (auto r : runs) {
    EXPECT_EQ(r.first, expect);
    EXPECT_LE(r.count, 64u);
    expect += r.count;
  }
  EXPECT_EQ(expect, 1000u);
  EXPECT_EQ(s.remaining(), 0u);
  EXPECT_FALSE(s.next(64));
}

TEST(BulkSchedule, ResumeSkipsInstalledPages) {
  BulkSchedule s(200);
  std::vector<std::uint64_t> installed(4, 0);
  installed[0] = ~std::uint64_t{0};  // pages 0..63
  installed[2] = 1;                  // page 128
  s.reset(installed);
  EXPECT_EQ(s.remaining(), 200u - 65u);
  std::set<std::uint64_t> sent;
  for (auto r : drain(s, 32)) {
    for (auto p = r.first; p < r.first + r.count; ++p) EXPECT_TRUE(sent.insert(p).second);
  }
  EXPECT_EQ(sent.size(), 135u);
  EXPECT_EQ(sent.count(0), 0u);
  EXPECT_EQ(sent.count(128), 0u);
  EXPECT_EQ(sent.count(64), 1u);
}

TEST(BulkSchedule, FaultPullsFollowingPagesToTheFront) {
  BulkSchedule s(10000, /*window=*/100);
  auto first = s.next(8);
  ASSERT_TRUE(first);
  EXPECT_EQ(first->first, 0u);
  s.markSent(5000);
  s.noteFault(5000);
  auto hot = s.next(64);
  ASSERT_TRUE(hot);
  EXPECT_EQ(hot->first, 5001u);
  EXPECT_EQ(hot->count, 64u);
  auto hot2 = s.next(64);
  EXPECT_EQ(hot2->first, 5065u);
  EXPECT_EQ(hot2->count, 36u);  // the window ends at 5000 + 1 + 100
  auto back = s.next(8);
  EXPECT_EQ(back->first, 8u);  // then the sequential sweep goes on
}

TEST(BulkSchedule, DemandRepliesAreNotSentAgain) {
  BulkSchedule s(128);
  s.markSent(10);
  s.markSent(10);
  EXPECT_EQ(s.remaining(), 127u);
  auto runs = drain(s, 1000);
  ASSERT_EQ(runs.size(), 2u);
  EXPECT_EQ(runs[0].first, 0u);
  EXPECT_EQ(runs[0].count, 10u);
  EXPECT_EQ(runs[1].first, 11u);
}

TEST(BulkSchedule, ResumeAfterStreamingRequeuesMissingPagesBehindCursor) {
  BulkSchedule s(300);
  drain(s, 100);
  std::vector<std::uint64_t> installed(5, ~std::uint64_t{0});
  installed[1] = 0;  // pages 64..127 were lost with a broken link
  s.reset(installed);
  auto runs = drain(s, 1000);
  ASSERT_EQ(runs.size(), 1u);
  EXPECT_EQ(runs[0].first, 64u);
  EXPECT_EQ(runs[0].count, 64u);
}

}  // namespace lazymig::agent

namespace lazymig::agent {

// Pre-copy's switch: the stale pages and the hot set go before fault neighbours and the rest,
// each once, skipping what the destination has; the priority survives a reconnect's reset.
TEST(BulkSchedule, PutFirstSendsThoseBeforeAnythingElseOnce) {
  BulkSchedule s(256, /*window=*/4);
  Bitmap first(256);
  for (std::uint64_t p : {200, 201, 202, 50, 7}) first.set(p);
  std::vector<std::uint64_t> has(4, 0);
  has[0] = 1ull << 7;  // the destination has page 7 current
  s.reset(has);
  s.putFirst(first);
  s.noteFault(100);
  auto runs = drain(s, 2);
  ASSERT_GE(runs.size(), 4u);
  EXPECT_EQ(runs[0].first, 50u);
  EXPECT_EQ(runs[1].first, 200u);
  EXPECT_EQ(runs[1].count, 2u);
  EXPECT_EQ(runs[2].first, 202u);
  EXPECT_EQ(runs[3].first, 101u) << "then the fault's neighbours";
  std::uint64_t total = 0;
  for (auto r : runs) total += r.count;
  EXPECT_EQ(total, 255u) << "every page but the one it has, once";

  s.reset(std::vector<std::uint64_t>(4, 0));
  EXPECT_EQ(s.next(8)->first, 7u) << "after a reset the first pages still go first";
}

}  // namespace lazymig::agent
