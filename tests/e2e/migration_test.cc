// Whole migrations between two real agent processes over TLS, with a real test VM faulting
// on real userfaultfd, every byte verified.
#include "tests/e2e/e2e.h"

namespace lazymig::e2e {
namespace {

struct Case {
  std::string memory;
  std::string pattern;
};

class MemoryAndPattern : public ::testing::TestWithParam<Case> {};

TEST_P(MemoryAndPattern, EveryByteArrives) {
  auto o = baseOptions();
  o.memory = GetParam().memory;
  o.pattern = GetParam().pattern;
  auto r = cli::runDemo(o);
  ASSERT_TRUE(r) << r.error().message();
  expectVerified(*r, o.size);
  EXPECT_GT(r->value("demand_faults", 0), 0) << "the vCPUs must have faulted on missing pages";
  if (o.pattern == "write") {
    EXPECT_GT(r->value("guest_writes", 0), 0);
  }
}

INSTANTIATE_TEST_SUITE_P(Matrix, MemoryAndPattern,
                         ::testing::Values(Case{"anon", "sequential"}, Case{"anon", "random"},
                                           Case{"anon", "hot"}, Case{"anon", "write"},
                                           Case{"memfd", "sequential"}, Case{"memfd", "random"},
                                           Case{"memfd", "hot"}, Case{"memfd", "write"}),
                         [](const auto& param_info) {
                           return param_info.param.memory + "_" + param_info.param.pattern;
                         });

TEST(Migration, OnePage) {
  auto o = baseOptions();
  o.size = 4096;
  o.accesses = 10;
  auto r = cli::runDemo(o);
  ASSERT_TRUE(r) << r.error().message();
  expectVerified(*r, o.size);
}

TEST(Migration, OneMiB) {
  auto o = baseOptions();
  o.size = 1 << 20;
  auto r = cli::runDemo(o);
  ASSERT_TRUE(r) << r.error().message();
  expectVerified(*r, o.size);
}

TEST(Migration, OneGiBHotSet) {
  auto o = baseOptions();
  o.size = 1ull << 30;
  o.vcpus = 4;
  o.accesses = 20000;
  auto r = cli::runDemo(o);
  ASSERT_TRUE(r) << r.error().message();
  expectVerified(*r, o.size);
}

TEST(Migration, ZeroHeavyMemorySendsMarkersOnly) {
  auto o = baseOptions();
  o.zero_ratio = 0.95;
  auto r = cli::runDemo(o);
  ASSERT_TRUE(r) << r.error().message();
  expectVerified(*r, o.size);
  EXPECT_GT(r->value("zero_pages", 0), static_cast<int>(o.size / 4096 * 0.9));
}

TEST(Migration, ZeroFreeMemory) {
  auto o = baseOptions();
  o.zero_ratio = 0.0;
  auto r = cli::runDemo(o);
  ASSERT_TRUE(r) << r.error().message();
  expectVerified(*r, o.size);
  EXPECT_EQ(r->value("zero_pages", 1), 0);
}

TEST(Migration, SeveralRegionsWithHolesBetweenThem) {
  auto o = baseOptions();
  o.regions = 3;
  o.pattern = "random";
  auto r = cli::runDemo(o);
  ASSERT_TRUE(r) << r.error().message();
  expectVerified(*r, o.size);
}

TEST(Migration, BalloonDiscardsDuringMigrationReadAsZeros) {
  auto o = baseOptions();
  o.balloon = true;
  o.pattern = "random";
  o.extra_yaml = "migration:\n  bulk_rate_limit_mib_s: 64\n";
  auto r = cli::runDemo(o);
  ASSERT_TRUE(r) << r.error().message();
  // Removed pages count as arrived; the test VM checked they read as zeros.
  EXPECT_TRUE(r->value("verified", false)) << r->dump();
  EXPECT_EQ(r->value("mismatches", 1), 0) << r->dump();
}

}  // namespace
}  // namespace lazymig::e2e
