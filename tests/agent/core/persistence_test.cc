// What a migration persists, and in which order, with a real RocksDB behind a gate that holds
// one chosen write (tests/store/gated_database.h) so that races are replayed exactly.
#include <gtest/gtest.h>

#include <filesystem>
#include <thread>

#include "agent/core/migration.h"
#include "metrics/metrics.h"
#include "store/page_map_checkpoint.h"
#include "tests/store/gated_database.h"

namespace lazymig::agent {
namespace {

// The state machine and persistence of Migration, without any role's threads.
class BareMigration final : public Migration {
 public:
  explicit BareMigration(AgentContext& ctx)
      : Migration("m", "destination", nlohmann::json::object(), ctx, "peer") {}
  using Migration::setState;
  Status start() override { return {}; }
  Status resume(const RuntimeRecord&) override { return {}; }
  Status cancel(bool) override { return {}; }
  void shutdown() override {}

 protected:
  void addDetails(nlohmann::json&) const override {}
  std::uint64_t pagesTotal() const override { return 0; }
  std::uint64_t pagesDone() const override { return 0; }
  std::uint64_t bytesMoved() const override { return 0; }
};

class Persistence : public ::testing::Test {
 protected:
  void SetUp() override {
    char tmpl[] = "/tmp/lazymig-persistence-test-XXXXXX";
    dir_ = ::mkdtemp(tmpl);
    auto db = store::Database::open(dir_ + "/db");
    ASSERT_TRUE(db) << db.error().message();
    real_ = std::move(*db);
    gated_ = std::make_unique<store::GatedDatabase>(*real_);
  }
  void TearDown() override {
    gated_.reset();
    real_.reset();
    std::filesystem::remove_all(dir_);
  }
  std::string storedState() {
    auto r = real_->getMigration("m");
    EXPECT_TRUE(r && *r);
    return r && *r ? (*r)->state : "";
  }

  std::string dir_;
  config::Config config_;
  std::unique_ptr<store::Database> real_;
  std::unique_ptr<store::GatedDatabase> gated_;
};

// Issue 13: finish() moves to completing on the urgent loop while the bulk loop fails the
// migration. The completing record is built first and held inside its write; failed is
// persisted meanwhile; then completing lands. RocksDB must end with failed, or a restarted
// agent would resume a failed migration.
TEST_F(Persistence, AnOlderRecordNeverLandsLast) {
  AgentContext ctx{config_, nullptr, *gated_, nullptr};
  BareMigration m(ctx);
  ASSERT_TRUE(m.setState(MigrationState::kRunning));
  gated_->holdNextRecordWrite("completing");
  std::thread urgent([&] { m.setState(MigrationState::kCompleting); });
  ASSERT_TRUE(gated_->waitUntilHeld());
  ASSERT_TRUE(m.setState(MigrationState::kFailed, "source gone"));
  gated_->release();
  urgent.join();
  EXPECT_EQ(storedState(), "failed");
  EXPECT_EQ(m.state(), MigrationState::kFailed);
}

// Issue 13: the database's write hook already observes every write; checkpointPageMap
// observed its own write a second time, so lazymig_store_write_seconds (and the alert on it)
// read twice the writes there were.
TEST_F(Persistence, OneCheckpointIsOneStoreWriteSample) {
  auto metrics = metrics::AgentMetrics::create("n");
  real_->setWriteObserver(
      [m = metrics.get()](std::chrono::nanoseconds d) { m->observeStoreWrite(d); });
  store::PageMap pages(64);
  store::PageMapCheckpoint checkpoint(*real_, "m", pages);
  pages.markInstalled(PageIndex{3});
  checkpoint.run();
  EXPECT_NE(metrics->scrapeText().find(R"(lazymig_store_write_seconds_count{node="n"} 1)"),
            std::string::npos)
      << metrics->scrapeText();
}

}  // namespace
}  // namespace lazymig::agent
