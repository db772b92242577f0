// Invariants 3 and 4 with real processes: links cut and stalled through a chaos proxy, agents
// killed with SIGKILL and restarted, a source gone for good. Every byte still verified.
#include <signal.h>

#include <fstream>

#include "cli/child_process.h"
#include "client/control_client.h"
#include "tests/e2e/e2e.h"

namespace lazymig::e2e {
namespace {

using cli::Side;

// Slow enough that every kill and cut lands while pages are still moving.
constexpr const char* kSlowBulk =
    "migration:\n  bulk_rate_limit_mib_s: 48\n  stall_timeout_ms: 600\n  checkpoint_interval_ms: "
    "20\n"
    "  reconnect:\n    initial_backoff_ms: 20\n    max_backoff_ms: 200\n    give_up_after_s: 60\n";

cli::DemoOptions slowOptions() {
  auto o = baseOptions();
  o.size = 128ull << 20;
  o.extra_yaml = kSlowBulk;
  return o;
}

nlohmann::json finish(cli::DemoRun& run) {
  auto vm = run.waitDestinationVm();
  EXPECT_TRUE(vm) << (vm ? "" : vm.error().message());
  if (!vm) return {};
  return run.report(*vm, 0);
}

TEST(Resilience, LinkCutManyTimesCompletesVerified) {
  auto run = cli::DemoRun::prepare(slowOptions());
  ASSERT_TRUE(run) << run.error().message();
  ASSERT_TRUE(run->prepareSourceMemory());
  Proxy proxy = startProxy(*run, {"--cut-ms", "150:400", "--seed", "3"});
  ASSERT_TRUE(run->createMigrations(proxy.address));
  ASSERT_TRUE(run->startDestinationVm());
  auto r = finish(*run);
  proxy.process.signal(SIGTERM);
  proxy.process.wait(std::chrono::seconds(5));
  expectVerified(r, run->options().size);
  EXPECT_GE(r.value("reconnects", 0), 2)
      << "the link must actually have been cut: " << proxy.process.output();
}

TEST(Resilience, StalledLinkIsDetectedAndReplaced) {
  auto run = cli::DemoRun::prepare(slowOptions());
  ASSERT_TRUE(run) << run.error().message();
  ASSERT_TRUE(run->prepareSourceMemory());
  Proxy proxy = startProxy(*run, {"--stall", "--cut-ms", "300:300", "--max-cuts", "2"});
  ASSERT_TRUE(run->createMigrations(proxy.address));
  ASSERT_TRUE(run->startDestinationVm());
  auto r = finish(*run);
  proxy.process.signal(SIGTERM);
  expectVerified(r, run->options().size);
  EXPECT_GE(r.value("reconnects", 0), 1) << "a black-holed link must be declared stalled";
}

enum class KillPoint { kBeforeHandshake, kHeavyFaulting, kMidBulk, kNearCompletion };

class DestinationKilled : public ::testing::TestWithParam<KillPoint> {};

TEST_P(DestinationKilled, RestartedAgentRecoversAndFinishes) {
  auto o = slowOptions();
  o.pattern = "write";
  auto run = cli::DemoRun::prepare(o);
  ASSERT_TRUE(run) << run.error().message();
  ASSERT_TRUE(run->prepareSourceMemory());
  ASSERT_TRUE(run->createMigrations());
  const std::uint64_t total = o.size / 4096;
  auto installed = [&] { return progressOf(*run, Side::kDestination, "pages_installed"); };
  switch (GetParam()) {
    case KillPoint::kBeforeHandshake:
      run->killAgent(Side::kDestination, SIGKILL);
      ASSERT_TRUE(run->startAgent(Side::kDestination));
      ASSERT_TRUE(run->startDestinationVm());
      break;
    case KillPoint::kHeavyFaulting:
      ASSERT_TRUE(run->startDestinationVm());
      ASSERT_TRUE(
          waitUntil([&] { return progressOf(*run, Side::kDestination, "demand_faults") > 50; },
                    std::chrono::seconds(30)));
      run->killAgent(Side::kDestination, SIGKILL);
      ASSERT_TRUE(run->startAgent(Side::kDestination));
      break;
    case KillPoint::kMidBulk:
    case KillPoint::kNearCompletion: {
      ASSERT_TRUE(run->startDestinationVm());
      double at = GetParam() == KillPoint::kMidBulk ? 0.4 : 0.9;
      ASSERT_TRUE(waitUntil(
          [&] { return installed() > static_cast<std::uint64_t>(at * static_cast<double>(total)); },
          std::chrono::seconds(60)));
      run->killAgent(Side::kDestination, SIGKILL);
      ASSERT_TRUE(run->startAgent(Side::kDestination));
      break;
    }
  }
  auto r = finish(*run);
  expectVerified(r, o.size, GetParam() == KillPoint::kBeforeHandshake);
  auto m = run->migration(Side::kDestination);
  ASSERT_TRUE(m);
  if (GetParam() != KillPoint::kBeforeHandshake) {
    EXPECT_TRUE(m->value("resumed_after_restart", false)) << m->dump();
    // Pages installed before the kill were recovered, not installed again: the restarted
    // agent's installs plus the recovered pages add up to exactly every page.
    auto p = m->value("progress", nlohmann::json::object());
    std::uint64_t restored = p.value("restored_pages", std::uint64_t{0});
    std::uint64_t installed_after =
        p.value("demand_pages", std::uint64_t{0}) + p.value("bulk_pages", std::uint64_t{0}) +
        p.value("zero_pages", std::uint64_t{0}) + p.value("removed_pages", std::uint64_t{0});
    EXPECT_GT(restored, 0u) << m->dump();
    EXPECT_EQ(restored + installed_after, total) << m->dump();
  }
}

INSTANTIATE_TEST_SUITE_P(Points, DestinationKilled,
                         ::testing::Values(KillPoint::kBeforeHandshake, KillPoint::kHeavyFaulting,
                                           KillPoint::kMidBulk, KillPoint::kNearCompletion),
                         [](const auto& param_info) {
                           switch (param_info.param) {
                             case KillPoint::kBeforeHandshake:
                               return std::string("BeforeHandshake");
                             case KillPoint::kHeavyFaulting:
                               return std::string("HeavyFaulting");
                             case KillPoint::kMidBulk:
                               return std::string("MidBulk");
                             case KillPoint::kNearCompletion:
                               return std::string("NearCompletion");
                           }
                           return std::string("Unknown");
                         });

class SourceKilled : public ::testing::TestWithParam<std::string> {};

TEST_P(SourceKilled, RestartedSourceServesTheRest) {
  auto o = slowOptions();
  o.memory = GetParam();
  auto run = migrationUnderWay(o);
  ASSERT_TRUE(run) << run.error().message();
  const std::uint64_t total = o.size / 4096;
  ASSERT_TRUE(
      waitUntil([&] { return progressOf(*run, Side::kDestination, "pages_installed") > total / 3; },
                std::chrono::seconds(60)));
  run->killAgent(Side::kSource, SIGKILL);
  ASSERT_TRUE(run->startAgent(Side::kSource));
  auto r = finish(*run);
  expectVerified(r, o.size);
  EXPECT_GE(r.value("reconnects", 0), 1);
}

INSTANTIATE_TEST_SUITE_P(Memory, SourceKilled, ::testing::Values("anon", "memfd"));

TEST(Resilience, SourceGoneForGoodFailsLoudlyWithinDeadline) {
  auto o = slowOptions();
  o.extra_yaml =
      "migration:\n  bulk_rate_limit_mib_s: 16\n  stall_timeout_ms: 500\n"
      "  reconnect:\n    initial_backoff_ms: 20\n    max_backoff_ms: 200\n    give_up_after_s: 2\n";
  auto run = migrationUnderWay(o);
  ASSERT_TRUE(run) << run.error().message();
  ASSERT_TRUE(
      waitUntil([&] { return progressOf(*run, Side::kDestination, "pages_installed") > 1000; },
                std::chrono::seconds(30)));
  run->killAgent(Side::kSource, SIGKILL);
  auto t0 = std::chrono::steady_clock::now();
  std::string state;
  ASSERT_TRUE(waitUntil(
      [&] {
        auto m = run->migration(Side::kDestination);
        state = m ? m->value("state", "") : "";
        return state == "failed";
      },
      std::chrono::seconds(20)));
  EXPECT_LT(std::chrono::steady_clock::now() - t0, std::chrono::seconds(15));
  auto m = run->migration(Side::kDestination);
  ASSERT_TRUE(m);
  EXPECT_NE(m->value("reason", "").find("pages never received"), std::string::npos) << m->dump();
  // ...and in the metric the LazymigMigrationFailed alert watches.
  std::string metrics = scrapeMetrics(*run, Side::kDestination);
  EXPECT_NE(
      metrics.find(
          R"(lazymig_migration_duration_seconds_count{node="destination",outcome="failed"} 1)"),
      std::string::npos)
      << metrics;
  // The test VM sees the failure and leaves (exit 3) instead of hanging the suite.
  auto vm = run->waitDestinationVm();
  ASSERT_TRUE(vm) << vm.error().message();
  EXPECT_FALSE(vm->value("verified", true));
}

// Invariant 3: the source never releases memory a running destination still needs. A cancel
// without force is refused (409) and changes nothing; the migration still completes.
TEST(Resilience, SourceRefusesCancelWhileDestinationRuns) {
  auto run = migrationUnderWay(slowOptions());
  ASSERT_TRUE(run) << run.error().message();
  const std::uint64_t total = run->options().size / 4096;
  ASSERT_TRUE(
      waitUntil([&] { return progressOf(*run, Side::kDestination, "pages_installed") > total / 4; },
                std::chrono::seconds(60)));
  client::ControlClient source(run->controlEndpoint(Side::kSource));
  auto refused = source.del("/v1/migrations/" + run->migration(Side::kSource)->value("id", ""));
  ASSERT_TRUE(refused) << refused.error().message();
  EXPECT_EQ(refused->status, 409) << refused->body;
  auto body = nlohmann::json::parse(refused->body, nullptr, false);
  EXPECT_EQ(body["error"].value("code", ""), "conflict") << refused->body;
  EXPECT_NE(body["error"].value("message", "").find("force"), std::string::npos) << refused->body;
  EXPECT_EQ(run->migration(Side::kSource)->value("state", ""), "serving");
  auto r = finish(*run);
  expectVerified(r, run->options().size);
}

}  // namespace
}  // namespace lazymig::e2e
