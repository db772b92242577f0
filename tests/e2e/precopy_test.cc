// Pre-copy between two real agents (docs/precopy.md): a live source test VM whose vCPU threads
// keep writing while the source agent copies its memory in rounds, the destination agent
// staging them, the orchestrator's pause and switch, and the destination test VM verifying
// every page against the pattern with the source's stamps on top.
#include <csignal>

#include "cli/child_process.h"
#include "tests/e2e/e2e.h"

namespace lazymig::e2e {
namespace {

using cli::Side;

nlohmann::json precopyOf(const cli::DemoRun& run, Side side) {
  auto m = run.migration(side);
  return m ? m->value("precopy", nlohmann::json::object()) : nlohmann::json::object();
}

// Creates the migration on one agent; the body is the demo's plus `precopy`.
Status create(const cli::DemoRun& run, Side side, nlohmann::json spec) {
  spec["id"] = cli::DemoRun::kMigrationId;
  spec["token"] = run.token();
  spec["precopy"] = "auto";
  auto r = client::ControlClient(run.controlEndpoint(side)).post("/v1/migrations", spec.dump());
  if (!r) return std::unexpected(r.error());
  if (r->status >= 300) return fail(Errc::kState, "POST /v1/migrations", r->body);
  return {};
}

// How fast the live source's two writer vCPUs write: bounded, the rounds shrink and few pages
// are stale at the switch; unbounded (0), they write every page between any two scans, the
// rounds stop shrinking and nearly every pre-copied page is stale.
struct Writers {
  std::string name;
  std::string writes_per_s;
  bool most_pages_current;
};

class Precopy : public ::testing::TestWithParam<Writers> {};

// The orchestrator's order (docs/control-api.md): both sides created with `precopy`, the
// source VM's live handover, `ready_to_pause`, the VM paused, `POST .../paused`, and only then
// the destination VM.
TEST_P(Precopy, LiveSourceRoundsThenSwitchVerifies) {
  auto o = baseOptions();
  o.memory = "memfd";
  o.pattern = "hot";
  auto run = cli::DemoRun::prepare(o);
  ASSERT_TRUE(run) << run.error().message();
  const std::string dir = run->dir();
  const std::string handover = dir + "/source-vmm.sock";
  const std::string handshake =
      dir + "/destination-vmm/" + std::string(cli::DemoRun::kMigrationId) + ".sock";
  const std::string stamps = dir + "/source-stamps.json";

  ASSERT_TRUE(create(*run, Side::kSource,
                     {{"role", "source"},
                      {"peer_identity", cli::DemoRun::identity(Side::kDestination)},
                      {"memory", {{"handover_socket", handover}}}}));
  ASSERT_TRUE(create(*run, Side::kDestination,
                     {{"role", "destination"},
                      {"peer_identity", cli::DemoRun::identity(Side::kSource)},
                      {"source_address", run->agentAddress(Side::kSource)},
                      {"handshake_socket", handshake}}));

  const std::string source_log = dir + "/source-vm.log";
  auto source_vm = cli::ChildProcess::spawn(
      {o.bindir + "/lazymig-testvm", "source", "--memory", o.memory, "--size",
       std::to_string(o.size), "--seed", std::to_string(o.seed), "--zero-ratio",
       std::to_string(o.zero_ratio), "--handover-socket", handover, "--live", "--live-vcpus", "2",
       "--live-writes-per-s", GetParam().writes_per_s, "--stamps-file", stamps},
      source_log);
  ASSERT_TRUE(source_vm) << source_vm.error().message();

  // Beyond the source's own precopy_deadline_ms (60 s), which says ready_to_pause anyway.
  const bool ready = waitUntil(
      [&] { return precopyOf(*run, Side::kSource).value("state", "") == "ready_to_pause"; },
      std::chrono::seconds(90));
  EXPECT_TRUE(ready) << precopyOf(*run, Side::kSource).dump() << "\n" << readFile(source_log);
  EXPECT_TRUE(waitUntil(
      [&] {
        return precopyOf(*run, Side::kDestination).value("staged_pages", std::uint64_t{0}) > 0;
      },
      std::chrono::seconds(30)))
      << "the destination stages the rounds before any VMM: "
      << precopyOf(*run, Side::kDestination).dump();

  source_vm->signal(SIGUSR1);
  ASSERT_TRUE(
      waitUntil([&] { return readFile(source_log).find("\"paused\":true") != std::string::npos; },
                std::chrono::seconds(30)))
      << readFile(source_log);
  auto paused =
      client::ControlClient(run->controlEndpoint(Side::kSource))
          .post(std::string("/v1/migrations/") + cli::DemoRun::kMigrationId + "/paused", "");
  ASSERT_TRUE(paused) << paused.error().message();
  ASSERT_EQ(paused->status, 200) << paused->body;

  ASSERT_TRUE(run->startDestinationVm({"--source-stamps", stamps}));
  auto vm = run->waitDestinationVm();
  ASSERT_TRUE(vm) << vm.error().message() << readFile(dir + "/destination-vm.log");

  auto r = run->report(*vm, 0);
  if (!r.value("verified", false)) run->keepDirectory();
  // Every page arrives exactly once: a staged page counts as a bulk or zero page when it
  // arrives, and a stale one once more only after its staged copy was dropped.
  expectVerified(r, o.size);
  EXPECT_EQ(r.value("guest_mismatches", std::uint64_t{1}), 0u) << r.dump();
  // The source guest's writes were live: the destination checked its stamps, not the pattern.
  const std::string source_out = readFile(source_log);
  const auto paused_at = source_out.rfind("{\"role\":\"source\",\"paused\":true");
  ASSERT_NE(paused_at, std::string::npos) << source_out;
  auto paused_line = nlohmann::json::parse(
      source_out.substr(paused_at, source_out.find('\n', paused_at) - paused_at), nullptr, false);
  EXPECT_GT(paused_line.value("stamped_pages", std::uint64_t{0}), 0u) << source_out;

  const std::uint64_t pages = o.size / 4096;
  const nlohmann::json dst = precopyOf(*run, Side::kDestination);
  EXPECT_TRUE(dst.value("switched", false)) << dst.dump();
  if (GetParam().most_pages_current) {
    EXPECT_GT(dst.value("installed_from_staging", std::uint64_t{0}), 0u) << dst.dump();
  }
  EXPECT_LE(dst.value("installed_from_staging", std::uint64_t{0}), pages) << dst.dump();
  EXPECT_LT(r.value("demand_faults", pages), pages)
      << "the staged pages are installed, not fetched on demand: " << r.dump();

  const nlohmann::json src = precopyOf(*run, Side::kSource);
  EXPECT_EQ(src.value("state", ""), "switched") << src.dump();
  EXPECT_GE(src.value("round", 0), 1) << src.dump();
  ASSERT_TRUE(src.contains("rounds") && !src["rounds"].empty()) << src.dump();
  EXPECT_EQ(src["rounds"][0].value("pages_sent", std::uint64_t{0}), pages)
      << "round 1 sends every page: " << src.dump();
  // Stale pages are pages the destination holds a copy of that the guest wrote since: never
  // more than the guest's memory, and exactly what the destination dropped.
  const std::uint64_t stale = src.value("stale_pages", pages + 1);
  EXPECT_LE(stale, pages) << src.dump();
  EXPECT_EQ(dst.value("stale_dropped", stale + 1), stale) << dst.dump() << src.dump();
  if (GetParam().most_pages_current) {
    // 4,000 writes/s, nine in ten into the hot tenth: even seconds of rounds leave most of the
    // guest's pages as the destination staged them.
    EXPECT_LT(stale, pages / 2) << src.dump();
  } else {
    EXPECT_GT(stale, 0u) << "every page written between the scans: " << src.dump();
  }

  source_vm->stop();
}

INSTANTIATE_TEST_SUITE_P(LiveWriters, Precopy,
                         ::testing::Values(Writers{"bounded", "2000", true},
                                           Writers{"unbounded", "0", false}),
                         [](const auto& param_info) { return param_info.param.name; });

}  // namespace
}  // namespace lazymig::e2e
