// The CPU a migration's loops spend, as the control API and the metrics report it: counted
// from when the role starts using a loop, frozen at the final state, and cpu_seconds_per_gib
// consistent with cpu_seconds and the memory moved (issue 14). No speed is asserted here; the
// figures themselves are the bench's (bench/run.sh).
#include "agent/core/migration_cpu.h"

#include <gtest/gtest.h>
#include <time.h>

#include <filesystem>
#include <future>
#include <regex>

#include "agent/core/migration.h"
#include "metrics/metrics.h"

namespace lazymig::agent {
namespace {

using namespace std::chrono_literals;

std::chrono::nanoseconds callingThreadCpu() {
  timespec ts{};
  clock_gettime(CLOCK_THREAD_CPUTIME_ID, &ts);
  return std::chrono::seconds(ts.tv_sec) + std::chrono::nanoseconds(ts.tv_nsec);
}

// Runs on `loop` and burns `amount` of its thread's CPU; returns once done.
void spinOn(loop::EventLoop& loop, std::chrono::nanoseconds amount) {
  std::promise<void> done;
  loop.post([&] {
    auto end = callingThreadCpu() + amount;
    while (callingThreadCpu() < end) {
    }
    done.set_value();
  });
  ASSERT_EQ(done.get_future().wait_for(60s), std::future_status::ready);
}

std::unique_ptr<loop::EventLoop> startLoop() {
  auto loop = loop::EventLoop::start("cpu-test");
  EXPECT_TRUE(loop.has_value());
  return std::move(*loop);
}

// The source's peer loop serves other migrations before this one starts: their work is not
// this migration's.
TEST(MigrationCpu, CountsALoopFromWhenItIsCounted) {
  auto loop = startLoop();
  spinOn(*loop, 200ms);
  MigrationCpu cpu;
  cpu.count(*loop);
  EXPECT_LT(cpu.total(), 100ms) << "work before count() was charged";
  spinOn(*loop, 50ms);
  EXPECT_GE(cpu.total(), 50ms);
  EXPECT_LT(cpu.total(), 200ms) << "work before count() was charged";
}

// A finished migration's figure stands: the shared loop works on for others, and a
// destination's loops are stopped and freed later.
TEST(MigrationCpu, StopFreezesTheTotalAndItOutlivesTheLoops) {
  auto a = startLoop();
  auto b = startLoop();
  MigrationCpu cpu;
  cpu.count(*a);
  cpu.count(*b);
  spinOn(*a, 30ms);
  spinOn(*b, 30ms);
  EXPECT_GE(cpu.total(), 60ms) << "both loops count";
  cpu.stop();
  const auto frozen = cpu.total();
  spinOn(*a, 50ms);
  EXPECT_EQ(cpu.total(), frozen);
  cpu.count(*b);  // too late: the migration is over
  a.reset();
  b.reset();
  EXPECT_EQ(cpu.total(), frozen);
}

TEST(MigrationCpu, SecondsPerGib) {
  EXPECT_FALSE(cpuSecondsPerGib(1.0, 0).has_value()) << "nothing moved yet: no figure";
  EXPECT_DOUBLE_EQ(*cpuSecondsPerGib(1.0, 512ull << 20), 2.0);
  EXPECT_DOUBLE_EQ(*cpuSecondsPerGib(3.0, 3ull << 30), 1.0);
}

// A role's migration reduced to what the CPU figures need: a loop it counts and the memory it
// says it moved.
class CountingMigration final : public Migration {
 public:
  CountingMigration(AgentContext& ctx, std::uint64_t moved)
      : Migration("m", "destination", nlohmann::json::object(), ctx, "peer"), moved_(moved) {}
  using Migration::setState;
  Status start() override { return {}; }
  Status resume(const RuntimeRecord&) override { return {}; }
  Status cancel(bool) override { return {}; }
  void shutdown() override {}
  void count(loop::EventLoop& loop) { cpu_.count(loop); }
  std::uint64_t moved_;

 protected:
  void addDetails(nlohmann::json&) const override {}
  std::uint64_t pagesTotal() const override { return 0; }
  std::uint64_t pagesDone() const override { return 0; }
  std::uint64_t bytesMoved() const override { return moved_; }
};

class MigrationCpuReport : public ::testing::Test {
 protected:
  void SetUp() override {
    char tmpl[] = "/tmp/lazymig-cpu-report-test-XXXXXX";
    dir_ = ::mkdtemp(tmpl);
    auto db = store::Database::open(dir_ + "/db");
    ASSERT_TRUE(db) << db.error().message();
    db_ = std::move(*db);
    metrics_ = metrics::AgentMetrics::create("n");
  }
  void TearDown() override {
    db_.reset();
    std::filesystem::remove_all(dir_);
  }
  // The value of one series in the exposition, or -1 when it is not there.
  double series(const std::string& name_and_labels) {
    const std::string text = metrics_->scrapeText();
    auto at = text.find(name_and_labels + " ");
    if (at == std::string::npos) return -1;
    return std::stod(text.substr(at + name_and_labels.size() + 1));
  }

  std::string dir_;
  config::Config config_;
  std::unique_ptr<store::Database> db_;
  std::unique_ptr<metrics::AgentMetrics> metrics_;
};

TEST_F(MigrationCpuReport, StatusAndMetricsAgreeWithEachOther) {
  AgentContext ctx{config_, nullptr, *db_, metrics_.get()};
  CountingMigration m(ctx, 256ull << 20);
  auto loop = startLoop();
  m.count(*loop);
  spinOn(*loop, 40ms);
  ASSERT_TRUE(m.setState(MigrationState::kRunning));
  const nlohmann::json running = m.toJson();
  EXPECT_GE(running["cpu_seconds"].get<double>(), 0.040);
  EXPECT_EQ(running["progress"]["bytes_moved"].get<std::uint64_t>(), 256ull << 20);
  EXPECT_NEAR(running["cpu_seconds_per_gib"].get<double>(),
              running["cpu_seconds"].get<double>() * 4, 1e-9)
      << "cpu_seconds_per_gib = cpu_seconds / GiB moved";
  EXPECT_EQ(series(R"(lazymig_migration_cpu_seconds_total{node="n",role="destination"})"), 0)
      << "counted once, at the final state";

  ASSERT_TRUE(m.setState(MigrationState::kCompleted));
  const double cpu = m.toJson()["cpu_seconds"].get<double>();
  EXPECT_GE(cpu, running["cpu_seconds"].get<double>());
  spinOn(*loop, 20ms);  // after the end: not the migration's
  EXPECT_EQ(m.toJson()["cpu_seconds"].get<double>(), cpu) << "frozen at the final state";
  EXPECT_NEAR(series(R"(lazymig_migration_cpu_seconds_total{node="n",role="destination"})"), cpu,
              1e-6);
  EXPECT_EQ(series(R"(lazymig_migration_moved_bytes_total{node="n",role="destination"})"),
            static_cast<double>(256ull << 20));
  EXPECT_EQ(series(R"(lazymig_migration_cpu_seconds_per_gib_count{node="n",role="destination"})"),
            1);
  EXPECT_NEAR(series(R"(lazymig_migration_cpu_seconds_per_gib_sum{node="n",role="destination"})"),
              cpu * 4, 1e-6);
  EXPECT_EQ(series(R"(lazymig_migration_cpu_seconds_total{node="n",role="source"})"), 0);
}

TEST_F(MigrationCpuReport, NoFigurePerGibBeforeAnythingMoved) {
  AgentContext ctx{config_, nullptr, *db_, metrics_.get()};
  CountingMigration m(ctx, 0);
  const nlohmann::json j = m.toJson();
  EXPECT_EQ(j["cpu_seconds"].get<double>(), 0.0);
  EXPECT_TRUE(j["cpu_seconds_per_gib"].is_null()) << j.dump();
  ASSERT_TRUE(m.setState(MigrationState::kFailed, "test"));
  EXPECT_EQ(series(R"(lazymig_migration_cpu_seconds_per_gib_count{node="n",role="destination"})"),
            0)
      << "a migration that moved nothing has no figure per GiB";
}

}  // namespace
}  // namespace lazymig::agent
