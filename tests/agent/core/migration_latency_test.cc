// The fault latency a migration reports: the percentiles and the whole distribution for a CDF
// (fault_latency_cdf_us, issue 14) come from the same histogram and agree with each other. No
// speed is asserted here; the figures themselves are the bench's (bench/run.sh).
#include <gtest/gtest.h>
#include <stdlib.h>

#include <algorithm>
#include <cmath>
#include <filesystem>
#include <map>

#include "agent/core/migration.h"
#include "base/latency_histogram.h"

namespace lazymig::agent {
namespace {

using namespace std::chrono_literals;

// A role's migration reduced to its fault latency histogram.
class FaultingMigration final : public Migration {
 public:
  explicit FaultingMigration(AgentContext& ctx)
      : Migration("m", "destination", nlohmann::json::object(), ctx, "peer") {}
  Status start() override { return {}; }
  Status resume(const RuntimeRecord&) override { return {}; }
  Status cancel(bool) override { return {}; }
  void shutdown() override {}
  void fault(std::chrono::nanoseconds latency) { stats_.fault_latency.record(latency); }

 protected:
  void addDetails(nlohmann::json&) const override {}
  std::uint64_t pagesTotal() const override { return 0; }
  std::uint64_t pagesDone() const override { return 0; }
  std::uint64_t bytesMoved() const override { return 0; }
};

class MigrationLatency : public ::testing::Test {
 protected:
  void SetUp() override {
    char tmpl[] = "/tmp/lazymig-latency-test-XXXXXX";
    dir_ = ::mkdtemp(tmpl);
    auto db = store::Database::open(dir_ + "/db");
    ASSERT_TRUE(db) << db.error().message();
    db_ = std::move(*db);
  }
  void TearDown() override {
    db_.reset();
    std::filesystem::remove_all(dir_);
  }

  std::string dir_;
  config::Config config_;
  std::unique_ptr<store::Database> db_;
};

TEST(LatencyCdfQuantiles, RunFromOnePercentToTheTailInOrder) {
  EXPECT_DOUBLE_EQ(kLatencyCdfQuantiles.front(), 0.01);
  EXPECT_DOUBLE_EQ(kLatencyCdfQuantiles.back(), 0.999);
  for (std::size_t i = 1; i < kLatencyCdfQuantiles.size(); ++i)
    EXPECT_LT(kLatencyCdfQuantiles[i - 1], kLatencyCdfQuantiles[i]) << "at " << i;
  for (double q : {0.5, 0.9, 0.99}) {
    EXPECT_NE(std::find(kLatencyCdfQuantiles.begin(), kLatencyCdfQuantiles.end(), q),
              kLatencyCdfQuantiles.end())
        << q << ": the reported percentiles lie on the CDF";
  }
}

TEST_F(MigrationLatency, NoDistributionBeforeAFault) {
  AgentContext ctx{config_, nullptr, *db_, nullptr};
  FaultingMigration m(ctx);
  const nlohmann::json j = m.toJson();
  ASSERT_TRUE(j["fault_latency_cdf_us"].is_array()) << j.dump();
  EXPECT_TRUE(j["fault_latency_cdf_us"].empty()) << "no fault, no distribution, not zeros";
}

TEST_F(MigrationLatency, DistributionAgreesWithThePercentiles) {
  AgentContext ctx{config_, nullptr, *db_, nullptr};
  FaultingMigration m(ctx);
  // 1..1000 µs: the sample of rank floor(q * 999) + 1 is that many µs.
  for (int i = 1; i <= 1000; ++i) m.fault(std::chrono::microseconds(i));
  const nlohmann::json j = m.toJson();
  const nlohmann::json& cdf = j["fault_latency_cdf_us"];
  const std::map<double, const char*> percentiles{{0.5, "p50"}, {0.9, "p90"}, {0.99, "p99"}};
  ASSERT_EQ(cdf.size(), kLatencyCdfQuantiles.size()) << j.dump();
  double previous = 0;
  for (std::size_t i = 0; i < cdf.size(); ++i) {
    const double q = cdf[i]["q"].get<double>(), us = cdf[i]["us"].get<double>();
    EXPECT_DOUBLE_EQ(q, kLatencyCdfQuantiles[i]);
    const double sample = std::floor(q * 999) + 1;
    EXPECT_GE(us, sample) << "q " << q << ": the bucket's upper edge";
    EXPECT_LE(us, sample * 1.04) << "q " << q << ": within the histogram's resolution";
    EXPECT_GE(us, previous) << "q " << q << ": a CDF does not go back";
    EXPECT_LE(us, j["fault_latency_us"]["max"].get<double>());
    previous = us;
    if (auto p = percentiles.find(q); p != percentiles.end()) {
      EXPECT_EQ(us, j["fault_latency_us"][p->second].get<double>()) << p->second;
    }
  }
}

}  // namespace
}  // namespace lazymig::agent
