// Issue 18, failure 6, with a real full filesystem: the destination agent's state directory is
// a small tmpfs that the test fills in the middle of a migration. The agent used to abort in
// RocksDB (`Assertion 'sync_without_flush_called_' failed`); now the migration carries on
// from memory, says it is degraded and why, new migrations get 507, and once space returns the
// records are written and degraded clears.
#include <signal.h>

#include "client/control_client.h"
#include "tests/e2e/e2e.h"
#include "tests/tmpfs.h"

namespace lazymig::e2e {
namespace {

using cli::DemoRun;
using cli::Side;

nlohmann::json destinationBody(const DemoRun& run, const std::string& id) {
  return {{"id", id},
          {"role", "destination"},
          {"token", std::string(64, 'c')},
          {"peer_identity", DemoRun::identity(Side::kSource)},
          {"source_address", run.agentAddress(Side::kSource)},
          {"handshake_socket", run.dir() + "/destination-vmm/" + id + ".sock"}};
}

// Waits until the destination's metrics count `degraded` store_full migrations and say
// whether the state directory takes writes.
bool waitStoreMetrics(const DemoRun& run, int degraded, bool writable) {
  const std::string want_degraded =
      R"(lazymig_migrations_degraded{node="destination",reason="store_full"} )" +
      std::to_string(degraded);
  const std::string want_writable =
      R"(lazymig_store_writable{node="destination"} )" + std::string(writable ? "1" : "0");
  return waitUntil(
      [&] {
        auto text = scrapeMetrics(run, Side::kDestination);
        return text.find(want_degraded) != std::string::npos &&
               text.find(want_writable) != std::string::npos;
      },
      std::chrono::seconds(10));
}

TEST(FullDisk, MigrationFinishesVerifiedWhileDegradedAndRecoversWhenSpaceReturns) {
  auto o = baseOptions();
  // Slow enough (8 s) that the disk fills while pages are still moving.
  o.extra_yaml =
      "migration:\n  bulk_rate_limit_mib_s: 8\n  stall_timeout_ms: 600\n"
      "  checkpoint_interval_ms: 20\n";
  auto run = DemoRun::prepare(o);
  ASSERT_TRUE(run) << run.error().message();
  // The destination agent again, with its state directory on a 32 MiB tmpfs.
  run->killAgent(Side::kDestination, SIGTERM);
  const std::string state_dir = run->dir() + "/destination-state";
  std::string why;
  auto fs = testing::TmpfsMount::mount(state_dir, 32ull << 20, why);
  if (!fs) GTEST_SKIP() << why;
  ASSERT_TRUE(run->startAgent(Side::kDestination));
  client::ControlClient dest(run->controlEndpoint(Side::kDestination));

  ASSERT_TRUE(run->prepareSourceMemory());
  ASSERT_TRUE(run->createMigrations());
  ASSERT_TRUE(run->startDestinationVm());
  ASSERT_TRUE(waitUntil([&] { return progressOf(*run, Side::kDestination, "pages_installed") > 0; },
                        std::chrono::seconds(60)));

  fs->fill();
  nlohmann::json m;
  ASSERT_TRUE(waitUntil(
      [&] {
        auto got = run->migration(Side::kDestination);
        if (got) m = *got;
        return got && got->value("degraded", false);
      },
      std::chrono::seconds(30)))
      << "never degraded: " << m.dump();
  EXPECT_NE(m.value("degraded_reason", "").find("No space left"), std::string::npos) << m.dump();
  EXPECT_EQ(m.value("state", ""), "running") << m.dump();
  EXPECT_TRUE(waitStoreMetrics(*run, 1, false)) << scrapeMetrics(*run, Side::kDestination);

  // No new migration while nothing could be persisted for it.
  auto refused = dest.request("POST", "/v1/migrations", destinationBody(*run, "second").dump());
  ASSERT_TRUE(refused) << refused.error().message();
  EXPECT_EQ(refused->status, 507) << refused->body;
  auto error =
      nlohmann::json::parse(refused->body, nullptr, false).value("error", nlohmann::json());
  EXPECT_EQ(error.value("code", ""), "insufficient_storage") << refused->body;
  EXPECT_NE(error.value("message", "").find(state_dir), std::string::npos) << refused->body;
  EXPECT_NE(error.value("message", "").find("bytes free"), std::string::npos) << refused->body;

  // Faults and the bulk stream are served from memory: every byte arrives while degraded.
  auto vm = run->waitDestinationVm();
  ASSERT_TRUE(vm) << vm.error().message();
  expectVerified(run->report(*vm, 0), o.size);
  m = *run->migration(Side::kDestination);
  EXPECT_EQ(m.value("state", ""), "completed");
  EXPECT_TRUE(m.value("degraded", false)) << "its completed record is not persisted yet";

  fs->unfill();
  ASSERT_TRUE(waitUntil(
      [&] {
        auto got = run->migration(Side::kDestination);
        if (got) m = *got;
        return got && !got->value("degraded", true);
      },
      std::chrono::seconds(30)))
      << "degraded never cleared: " << m.dump();
  EXPECT_TRUE(waitStoreMetrics(*run, 0, true)) << scrapeMetrics(*run, Side::kDestination);
  auto accepted = dest.request("POST", "/v1/migrations", destinationBody(*run, "second").dump());
  ASSERT_TRUE(accepted);
  EXPECT_EQ(accepted->status, 201) << accepted->body;
  EXPECT_TRUE(dest.request("DELETE", "/v1/migrations/second", ""));

  // The record written on recovery is what a restarted agent finds: completed, not resumed.
  run->killAgent(Side::kDestination, SIGTERM);
  ASSERT_TRUE(run->startAgent(Side::kDestination));
  auto after = run->migration(Side::kDestination);
  ASSERT_TRUE(after) << after.error().message();
  EXPECT_EQ(after->value("state", ""), "completed") << after->dump();
  EXPECT_EQ(countOf(readFile(run->logPath(Side::kDestination)), "resuming migration"), 0);
}

}  // namespace
}  // namespace lazymig::e2e
