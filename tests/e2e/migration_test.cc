// Whole migrations between two real agent processes over TLS, with a real test VM faulting
// on real userfaultfd, every byte verified.
#include <unistd.h>

#include <filesystem>
#include <thread>

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

// An agent's port can be taken between the demo's check and the agent's bind (a parallel
// test's outgoing connection): the demo picks another port and starts it again. The stand-in
// in front of the first agent plays that, once, with the agent's own error line.
TEST(Migration, DemoStartsAnAgentAgainOnAnotherPortWhenItsPortWasTaken) {
  char dir[] = "/tmp/lazymig-port-taken-XXXXXX";
  ASSERT_NE(::mkdtemp(dir), nullptr);
  const std::string once = std::string(dir) + "/taken";
  auto o = baseOptions();
  o.size = 1 << 20;
  o.agent_prefix = {"/bin/sh", "-c",
                    "if [ ! -e " + once + " ]; then touch " + once +
                        "; echo 'msg=\"agent failed to start\" error=\"listen: 127.0.0.1:1: "
                        "Address already in use (errno 98)\"' >&2; exit 1; fi; exec \"$@\"",
                    "taken-port-stand-in"};
  auto r = cli::runDemo(o);
  ASSERT_TRUE(r) << r.error().message();
  expectVerified(*r, o.size);
  EXPECT_EQ(::access(once.c_str(), F_OK), 0) << "the stand-in never refused a start";
  std::filesystem::remove_all(dir);
}

// Any other start-up failure is not retried, and its error carries the agent log's last lines.
TEST(Migration, AnAgentThatCannotStartIsReportedWithTheEndOfItsLog) {
  auto o = baseOptions();
  o.size = 1 << 20;
  o.agent_prefix = {"/bin/sh", "-c", "echo 'the cause, in the log' >&2; exit 1", "stand-in"};
  auto r = cli::runDemo(o);
  ASSERT_FALSE(r);
  EXPECT_NE(r.error().message().find("exited at start-up"), std::string::npos)
      << r.error().message();
  EXPECT_NE(r.error().message().find("the cause, in the log"), std::string::npos)
      << r.error().message();
}

TEST(Migration, OneMiB) {
  auto o = baseOptions();
  o.size = 1 << 20;
  auto r = cli::runDemo(o);
  ASSERT_TRUE(r) << r.error().message();
  expectVerified(*r, o.size);
}

// Between two real agents every fault served over the network is timed by phase: the source
// sends its ServeTimes, the destination splits the round trip, and the status, the demo JSON
// and /metrics all carry the phases. The bulk stream is capped so that most faults go over
// the network.
TEST(Migration, EveryNetworkFaultIsTimedByPhase) {
  auto o = baseOptions();
  o.size = 32ull << 20;
  o.pattern = "random";
  o.extra_yaml = "migration:\n  bulk_rate_limit_mib_s: 16\n";
  auto run = runToTheEnd(o);
  ASSERT_TRUE(run) << run.error().message();
  auto r = run->run.report(run->vm, 1.0);
  expectVerified(r, o.size);
  const auto& phases = r["fault_phases_us"];
  EXPECT_GT(phases.value("count", std::uint64_t{0}), 0u) << r.dump();
  // Faults served over the network, each timed once its ServeTimes came (a fault whose page
  // the bulk stream installed first has no phases).
  EXPECT_GT(phases["total"].value("p50", 0.0), 0.0) << phases.dump();
  const std::string metrics = scrapeMetrics(run->run, cli::Side::kDestination);
  EXPECT_NE(metrics.find("lazymig_fault_phase_seconds_count{"), std::string::npos);
  for (const char* phase : {"destination_wait", "request_wire", "source_wait", "source_work",
                            "reply_wire", "install_wake"}) {
    EXPECT_NE(metrics.find(std::string("phase=\"") + phase + "\""), std::string::npos) << phase;
  }
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

// An orchestrator may resume the destination VM while the source VM is still handing its
// memory over. The destination's channels must then wait at the source and open the moment
// the memory arrives: refused and retried, they would sit out a reconnect backoff that grows
// to seconds while the first vCPU faults wait.
TEST(Migration, DestinationResumedBeforeTheHandoverIsAnsweredWhenTheMemoryArrives) {
  auto o = baseOptions();
  o.memory = "memfd";
  auto run = cli::DemoRun::prepare(o);
  ASSERT_TRUE(run) << run.error().message();
  ASSERT_TRUE(run->createMigrations());
  ASSERT_TRUE(run->startDestinationVm());
  // Long enough for refusals to have cost several retries (100 + 200 + 400 + 800 ms), shorter
  // than the destination's wait for HelloOk (stall_timeout, 5 s).
  std::this_thread::sleep_for(std::chrono::milliseconds(1500));
  auto src = run->migration(cli::Side::kSource);
  ASSERT_TRUE(src);
  EXPECT_EQ(src->value("state", ""), "waiting_for_memory") << src->dump();
  ASSERT_TRUE(run->prepareSourceMemory());
  auto vm = run->waitDestinationVm();
  ASSERT_TRUE(vm) << vm.error().message();
  auto r = run->report(*vm, 0);
  expectVerified(r, o.size);
  EXPECT_EQ(r.value("reconnects", -1), 0) << r.dump();
  const std::string metrics = scrapeMetrics(*run, cli::Side::kSource);
  EXPECT_NE(metrics.find("lazymig_refusals_total{node=\"source\",reason=\"not_ready\"} 0\n"),
            std::string::npos)
      << "the source refused a channel that came before the memory, and it had to retry";
  EXPECT_NE(readFile(run->logPath(cli::Side::kSource))
                .find("destination waiting for the memory handover"),
            std::string::npos);
}

// A held Hello must not hold the destination forever (a half-open link looks the same): it
// waits stall_timeout for HelloOk, connects again, and the source keeps only the newest
// channel of each kind waiting.
TEST(Migration, DestinationWaitingLongForTheHandoverConnectsAgainAndFinishes) {
  auto o = baseOptions();
  o.memory = "memfd";
  o.extra_yaml = "migration:\n  stall_timeout_ms: 300\n";
  auto run = cli::DemoRun::prepare(o);
  ASSERT_TRUE(run) << run.error().message();
  ASSERT_TRUE(run->createMigrations());
  ASSERT_TRUE(run->startDestinationVm());
  auto waits = [&] {
    return countOf(readFile(run->logPath(cli::Side::kSource)), "waiting for the memory handover");
  };
  // Two channels, each held, given up on after 300 ms and held again.
  EXPECT_TRUE(waitUntil([&] { return waits() >= 6; }, std::chrono::seconds(30))) << waits();
  ASSERT_TRUE(run->prepareSourceMemory());
  auto vm = run->waitDestinationVm();
  ASSERT_TRUE(vm) << vm.error().message();
  expectVerified(run->report(*vm, 0), o.size);
}

}  // namespace
}  // namespace lazymig::e2e
