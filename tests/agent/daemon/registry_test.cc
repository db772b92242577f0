// The history of finished migrations is bounded: the oldest records (by updated_at) go first.
#include "agent/daemon/registry.h"

#include <gtest/gtest.h>

namespace lazymig::agent {
namespace {

TEST(Registry, PruneHistoryDropsTheOldestBeyondTheLimit) {
  Registry r;
  r.addHistory("c", {{"id", "c"}, {"updated_at", "2026-11-25T10:00:03.000Z"}});
  r.addHistory("a", {{"id", "a"}, {"updated_at", "2026-11-25T10:00:01.000Z"}});
  r.addHistory("d", {{"id", "d"}, {"updated_at", "2026-11-25T10:00:04.000Z"}});
  r.addHistory("b", {{"id", "b"}, {"updated_at", "2026-11-25T10:00:02.000Z"}});
  EXPECT_TRUE(r.pruneHistory(4).empty());
  auto dropped = r.pruneHistory(2);
  EXPECT_EQ(dropped, (std::vector<std::string>{"a", "b"}));
  EXPECT_FALSE(r.findHistory("a"));
  EXPECT_FALSE(r.findHistory("b"));
  EXPECT_TRUE(r.findHistory("c"));
  EXPECT_TRUE(r.findHistory("d"));
  EXPECT_EQ(r.history().size(), 2u);
}

}  // namespace
}  // namespace lazymig::agent
