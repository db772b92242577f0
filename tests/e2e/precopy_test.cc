// Pre-copy between two real agents (docs/precopy.md): a live source test VM whose vCPU threads
// keep writing while the source agent copies its memory in rounds, the destination agent
// staging them, the orchestrator's pause and switch, and the destination test VM verifying
// every page against the pattern with the source's stamps on top.
#include "cli/precopy_demo.h"
#include "tests/e2e/e2e.h"

namespace lazymig::e2e {
namespace {

using cli::Side;

nlohmann::json precopyOf(const cli::DemoRun& run, Side side) {
  auto m = run.migration(side);
  return m ? m->value("precopy", nlohmann::json::object()) : nlohmann::json::object();
}

// How fast the live source's two writer vCPUs write: bounded, the rounds shrink and few pages
// are stale at the switch; unbounded (0), they write every page between any two scans, the
// rounds stop shrinking and nearly every pre-copied page is stale.
struct Writers {
  std::string name;
  std::uint64_t writes_per_s;
  bool most_pages_current;
};

class Precopy : public ::testing::TestWithParam<Writers> {};

// The orchestrator's order (docs/control-api.md), as the demo runs it (cli/precopy_demo.h):
// both sides created with `precopy`, the source VM's live handover, `ready_to_pause`, the VM
// paused, `POST .../paused`, and only then the destination VM.
TEST_P(Precopy, LiveSourceRoundsThenSwitchVerifies) {
  auto o = baseOptions();
  o.memory = "memfd";
  o.pattern = "hot";
  o.precopy = "auto";
  o.source_writes_per_s = GetParam().writes_per_s;
  auto run = cli::DemoRun::prepare(o);
  ASSERT_TRUE(run) << run.error().message();
  const std::string dir = run->dir();
  ASSERT_TRUE(run->prepareSourceMemory());
  ASSERT_TRUE(run->createMigrations());

  // Beyond the source's own precopy_deadline_ms (60 s), which says ready_to_pause anyway.
  auto ready = cli::waitReadyToPause(*run);
  EXPECT_TRUE(ready) << ready.error().message() << "\n" << readFile(dir + "/source-vm.log");
  EXPECT_TRUE(waitUntil(
      [&] {
        return precopyOf(*run, Side::kDestination).value("staged_pages", std::uint64_t{0}) > 0;
      },
      std::chrono::seconds(30)))
      << "the destination stages the rounds before any VMM: "
      << precopyOf(*run, Side::kDestination).dump();

  auto paused = cli::pauseSourceAndSwitch(*run);
  ASSERT_TRUE(paused) << paused.error().message();

  ASSERT_TRUE(run->startDestinationVm());  // with --source-stamps
  auto vm = run->waitDestinationVm();
  ASSERT_TRUE(vm) << vm.error().message() << readFile(dir + "/destination-vm.log");

  auto r = run->report(*vm, 0);
  if (!r.value("verified", false)) run->keepDirectory();
  // Every page arrives exactly once: a staged page counts as a bulk or zero page when it
  // arrives, and a stale one once more only after its staged copy was dropped.
  expectVerified(r, o.size);
  EXPECT_EQ(r.value("guest_mismatches", std::uint64_t{1}), 0u) << r.dump();
  // The source guest's writes were live: the destination checked its stamps, not the pattern.
  const std::string source_out = run->sourceVmOutput();
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
}

INSTANTIATE_TEST_SUITE_P(LiveWriters, Precopy,
                         ::testing::Values(Writers{"bounded", 2000, true},
                                           Writers{"unbounded", 0, false}),
                         [](const auto& param_info) { return param_info.param.name; });

}  // namespace
}  // namespace lazymig::e2e
