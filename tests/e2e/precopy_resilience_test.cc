// Pre-copy between two real agents when things go wrong during the rounds, before the pause
// (docs/precopy.md): the link cut, the source agent or the destination agent SIGKILLed and
// restarted; and the switch policies `rounds N` and the deadline, and destination memory kinds
// other than memfd. Every run ends the same way: the destination test VM checks every page
// against the live source's stamps (the memory as it was at the pause), so a page installed
// from a copy older than the paused memory is a mismatch.
#include <csignal>
#include <fstream>

#include "cli/child_process.h"
#include "tests/e2e/e2e.h"

namespace lazymig::e2e {
namespace {

using cli::Side;
using std::chrono::seconds;

// Slow enough that round 1 of 64 MiB lasts seconds, so kills and cuts land in the rounds.
constexpr const char* kSlowRounds =
    "migration:\n  bulk_rate_limit_mib_s: 24\n  stall_timeout_ms: 600\n"
    "  checkpoint_interval_ms: 20\n"
    "  reconnect:\n    initial_backoff_ms: 20\n    max_backoff_ms: 200\n    give_up_after_s: 60\n";

cli::DemoOptions precopyOptions(const std::string& destination_memory = "memfd") {
  auto o = baseOptions();
  o.memory = destination_memory;  // the destination test VM's; the live source's is memfd
  o.pattern = "hot";
  o.extra_yaml = kSlowRounds;
  return o;
}

std::uint64_t numberOf(const nlohmann::json& j, const char* key) {
  return j.value(key, std::uint64_t{0});
}

// The orchestrator's pre-copy, one step per method, between two real agents: both migrations
// created with `precopy`, the live source test VM's handover (2 writer vCPUs), the source VM
// paused (SIGUSR1) and `POST .../paused`, then the destination test VM checking every page.
class PrecopyResilience : public ::testing::Test {
 protected:
  void TearDown() override {
    if (source_vm_) source_vm_->stop();
    if (HasFailure() && run_) run_->keepDirectory();
  }

  void prepare(const cli::DemoOptions& o) {
    auto run = cli::DemoRun::prepare(o);
    ASSERT_TRUE(run) << run.error().message();
    run_.emplace(std::move(*run));
  }

  // `deadline_ms` 0: the agents' default (60 s). `source_address`: where the destination dials
  // (a proxy); empty: the source agent itself.
  void createBoth(const std::string& precopy, int deadline_ms = 0,
                  const std::string& source_address = "") {
    nlohmann::json common{
        {"id", cli::DemoRun::kMigrationId}, {"token", run_->token()}, {"precopy", precopy}};
    if (deadline_ms > 0) common["precopy_deadline_ms"] = deadline_ms;
    nlohmann::json source = common;
    source.update({{"role", "source"},
                   {"peer_identity", cli::DemoRun::identity(Side::kDestination)},
                   {"memory", {{"handover_socket", run_->dir() + "/source-vmm.sock"}}}});
    nlohmann::json destination = common;
    destination.update(
        {{"role", "destination"},
         {"peer_identity", cli::DemoRun::identity(Side::kSource)},
         {"source_address",
          source_address.empty() ? run_->agentAddress(Side::kSource) : source_address},
         {"handshake_socket",
          run_->dir() + "/destination-vmm/" + std::string(cli::DemoRun::kMigrationId) + ".sock"}});
    for (auto [side, spec] :
         {std::pair{Side::kSource, source}, {Side::kDestination, destination}}) {
      auto r =
          client::ControlClient(run_->controlEndpoint(side)).post("/v1/migrations", spec.dump());
      ASSERT_TRUE(r) << r.error().message();
      ASSERT_LT(r->status, 300) << r->body;
    }
  }

  // The live source VM (memory in an fd, as a live handover needs: memfd, or hugetlb-shared):
  // its vCPUs write `writes_per_s` each (0: as fast as they can) until paused.
  void startSourceVm(const std::string& writes_per_s = "2000",
                     const std::string& memory = "memfd") {
    const auto& o = run_->options();
    auto vm = cli::ChildProcess::spawn(
        {o.bindir + "/lazymig-testvm", "source", "--memory", memory, "--size",
         std::to_string(o.size), "--seed", std::to_string(o.seed), "--zero-ratio",
         std::to_string(o.zero_ratio), "--handover-socket", run_->dir() + "/source-vmm.sock",
         "--live", "--live-vcpus", "2", "--live-writes-per-s", writes_per_s, "--stamps-file",
         stampsFile()},
        sourceLog());
    ASSERT_TRUE(vm) << vm.error().message();
    source_vm_.emplace(std::move(*vm));
  }

  nlohmann::json precopy(Side side) const {
    auto m = run_->migration(side);
    return m ? m->value("precopy", nlohmann::json::object()) : nlohmann::json::object();
  }
  bool sourceIn(const std::string& state, seconds timeout = seconds(60)) const {
    return waitUntil([&] { return precopy(Side::kSource).value("state", "") == state; }, timeout);
  }
  // Waits until the destination agent has staged more than `pages` pre-copied pages.
  bool staged(std::uint64_t pages) const {
    return waitUntil([&] { return numberOf(precopy(Side::kDestination), "staged_pages") > pages; },
                     seconds(60));
  }

  // The orchestrator's pause: the source VM stops (its stamps file is final), then the agent
  // hears it and switches.
  void pauseAndSwitch() {
    ASSERT_TRUE(sourceIn("ready_to_pause", seconds(90))) << precopy(Side::kSource).dump() << "\n"
                                                         << readFile(sourceLog());
    source_vm_->signal(SIGUSR1);
    ASSERT_TRUE(waitUntil(
        [&] { return readFile(sourceLog()).find("\"paused\":true") != std::string::npos; },
        seconds(30)))
        << readFile(sourceLog());
    auto paused =
        client::ControlClient(run_->controlEndpoint(Side::kSource))
            .post(std::string("/v1/migrations/") + cli::DemoRun::kMigrationId + "/paused", "");
    ASSERT_TRUE(paused) << paused.error().message();
    ASSERT_EQ(paused->status, 200) << paused->body;
  }

  // The destination VM, started only now, checks every page against the stamps: returns the
  // migration's report.
  nlohmann::json finish() {
    EXPECT_TRUE(run_->startDestinationVm({"--source-stamps", stampsFile()}));
    auto vm = run_->waitDestinationVm();
    EXPECT_TRUE(vm) << vm.error().message() << readFile(run_->dir() + "/destination-vm.log");
    return vm ? run_->report(*vm, 0) : nlohmann::json::object();
  }

  // 0 mismatches against the stamps (nothing stale installed), the source's writes were live,
  // and the destination dropped no more staged pages than the source named stale.
  void expectVerifiedAgainstStamps(const nlohmann::json& r, bool one_lifetime) {
    expectVerified(r, run_->options().size, one_lifetime);
    EXPECT_EQ(r.value("guest_mismatches", std::uint64_t{1}), 0u) << r.dump();
    const std::string out = readFile(sourceLog());
    const auto at = out.rfind("{\"role\":\"source\",\"paused\":true");
    ASSERT_NE(at, std::string::npos) << out;
    auto line = nlohmann::json::parse(out.substr(at, out.find('\n', at) - at), nullptr, false);
    EXPECT_GT(numberOf(line, "stamped_pages"), 0u) << out;
    const nlohmann::json src = precopy(Side::kSource);
    const nlohmann::json dst = precopy(Side::kDestination);
    EXPECT_EQ(src.value("state", ""), "switched") << src.dump();
    EXPECT_TRUE(dst.value("switched", false)) << dst.dump();
    EXPECT_LE(numberOf(dst, "stale_dropped"), numberOf(src, "stale_pages"))
        << dst.dump() << src.dump();
  }

  // The destination's memory kind took its own population path, and the staged pages went
  // into the guest that way (bounded writers leave most of them current).
  void expectInstalledFromStagingBy(const std::string& population_path) {
    auto m = run_->migration(Side::kDestination);
    ASSERT_TRUE(m);
    EXPECT_EQ(m->value("population_path", ""), population_path) << m->dump();
    EXPECT_GT(numberOf(precopy(Side::kDestination), "installed_from_staging"), 0u) << m->dump();
  }

  std::string stampsFile() const { return run_->dir() + "/source-stamps.json"; }
  std::string sourceLog() const { return run_->dir() + "/source-vm.log"; }
  std::uint64_t pages() const { return run_->options().size / 4096; }

  std::optional<cli::DemoRun> run_;
  std::optional<cli::ChildProcess> source_vm_;
};

// The link between the agents is cut again and again while the rounds run (the destination's
// memory here is anonymous: its staged pages go in by UFFDIO_COPY after the handshake).
TEST_F(PrecopyResilience, LinkCutDuringTheRoundsEndsVerified) {
  prepare(precopyOptions("anon"));
  Proxy proxy = startProxy(*run_, {"--cut-ms", "300:600", "--max-cuts", "8", "--seed", "19"});
  createBoth("auto", 0, proxy.address);
  startSourceVm();
  ASSERT_TRUE(sourceIn("rounds")) << precopy(Side::kSource).dump();
  const std::uint64_t before = progressOf(*run_, Side::kDestination, "reconnects");
  ASSERT_TRUE(
      waitUntil([&] { return progressOf(*run_, Side::kDestination, "reconnects") >= before + 2; },
                seconds(30)))
      << "the link must be cut during the rounds";
  EXPECT_NE(precopy(Side::kSource).value("state", ""), "switched");
  pauseAndSwitch();
  auto r = finish();
  proxy.process.signal(SIGTERM);
  proxy.process.wait(seconds(5));
  expectVerifiedAgainstStamps(r, true);
  expectInstalledFromStagingBy("uffd_copy");
}

// The source agent dies in round 1 and comes back: it takes the memory back from the source VM
// but not the write tracking, so it vouches for no page the destination staged -- all of them
// are stale and dropped, and every page is sent again.
TEST_F(PrecopyResilience, SourceAgentKilledDuringTheRoundsEndsVerified) {
  prepare(precopyOptions());
  createBoth("auto");
  startSourceVm();
  ASSERT_TRUE(staged(pages() / 4)) << precopy(Side::kDestination).dump();
  const std::string state = precopy(Side::kSource).value("state", "");
  EXPECT_TRUE(state == "rounds" || state == "ready_to_pause") << state;
  const std::uint64_t staged_before_kill = numberOf(precopy(Side::kDestination), "staged_pages");
  run_->killAgent(Side::kSource, SIGKILL);
  ASSERT_TRUE(run_->startAgent(Side::kSource));
  ASSERT_TRUE(sourceIn("ready_to_pause")) << precopy(Side::kSource).dump();
  EXPECT_EQ(precopy(Side::kSource).value("switch_reason", ""), "no_write_tracking");
  pauseAndSwitch();
  auto r = finish();
  expectVerifiedAgainstStamps(r, true);
  const nlohmann::json src = precopy(Side::kSource);
  const nlohmann::json dst = precopy(Side::kDestination);
  EXPECT_GT(numberOf(src, "stale_pages"), pages() / 4) << src.dump();
  // Every pre-copied page the destination staged was dropped (at least those staged when the
  // agent was killed). The source may name more stale than the destination drops: when the
  // pause comes before the destination reconnected, the first Resume after it also names the
  // pages the destination installed on demand meanwhile (current, and kept).
  EXPECT_GE(numberOf(dst, "stale_dropped"), staged_before_kill) << dst.dump() << src.dump();
  EXPECT_GE(r.value("reconnects", 0), 1) << r.dump();
}

// The destination agent dies during the rounds (no VMM there yet) and comes back: its staging
// is gone, its Resume names nothing installed, and the rounds send everything again.
TEST_F(PrecopyResilience, DestinationAgentKilledDuringTheRoundsEndsVerified) {
  prepare(precopyOptions("memfd-minor"));
  createBoth("auto");
  startSourceVm();
  ASSERT_TRUE(staged(pages() / 4)) << precopy(Side::kDestination).dump();
  EXPECT_NE(precopy(Side::kSource).value("state", ""), "switched");
  run_->killAgent(Side::kDestination, SIGKILL);
  ASSERT_TRUE(run_->startAgent(Side::kDestination));
  ASSERT_TRUE(staged(0)) << "the restarted destination stages again: "
                         << precopy(Side::kDestination).dump();
  pauseAndSwitch();
  auto r = finish();
  // The restarted agent counted every page it installed; the dead one installed none.
  expectVerifiedAgainstStamps(r, true);
  expectInstalledFromStagingBy("shmem_minor_continue");
}

// `precopy: rounds 3`: the source is ready to pause after exactly 3 rounds, never before, and
// says so in its status and its metrics.
TEST_F(PrecopyResilience, RoundsNIsReadyAfterExactlyNRounds) {
  prepare(precopyOptions());
  createBoth("rounds 3");
  startSourceVm();
  // Every status snapshot: at most 3 rounds while in `rounds`, at least 3 once ready.
  bool ready = false;
  std::string broken;
  waitUntil(
      [&] {
        const nlohmann::json p = precopy(Side::kSource);
        const auto state = p.value("state", "");
        const auto round = p.value("round", 0u);
        if ((state == "rounds" && round > 3) || (state == "ready_to_pause" && round < 3)) {
          broken = p.dump();
        }
        ready = state == "ready_to_pause";
        return ready || !broken.empty();
      },
      seconds(60));
  ASSERT_TRUE(ready) << precopy(Side::kSource).dump();
  EXPECT_EQ(broken, "");
  const nlohmann::json src = precopy(Side::kSource);
  EXPECT_EQ(src.value("switch_reason", ""), "rounds_done") << src.dump();
  EXPECT_EQ(src.value("ready_after_round", 0u), 3u) << src.dump();
  pauseAndSwitch();
  auto r = finish();
  expectVerifiedAgainstStamps(r, true);
  const std::string metrics = scrapeMetrics(*run_, Side::kSource);
  EXPECT_NE(metrics.find(
                R"(lazymig_precopy_source_switches_total{node="source",reason="rounds_done"} 1)"),
            std::string::npos)
      << metrics;
  EXPECT_NE(metrics.find(R"(lazymig_precopy_source_stale_pages_count{node="source"} 1)"),
            std::string::npos)
      << metrics;
}

// A deadline shorter than the rounds `rounds 1000` asks for: the source is ready to pause at
// the deadline, and the migration still verifies (here into anonymous memory, in round 1 or
// later whichever the deadline cut).
TEST_F(PrecopyResilience, DeadlineSwitchesBeforeTheRoundsAreDone) {
  prepare(precopyOptions("anon"));
  createBoth("rounds 1000", 1500);
  startSourceVm();
  ASSERT_TRUE(sourceIn("ready_to_pause", seconds(60))) << precopy(Side::kSource).dump();
  const nlohmann::json src = precopy(Side::kSource);
  EXPECT_EQ(src.value("switch_reason", ""), "deadline") << src.dump();
  EXPECT_LT(src.value("ready_after_round", 1000u), 1000u) << src.dump();
  pauseAndSwitch();
  auto r = finish();
  expectVerifiedAgainstStamps(r, true);
  const std::string metrics = scrapeMetrics(*run_, Side::kSource);
  EXPECT_NE(
      metrics.find(R"(lazymig_precopy_source_switches_total{node="source",reason="deadline"} 1)"),
      std::string::npos)
      << metrics;
}

// Guest memory in 2 MiB pages on both sides: the source's write tracking reports huge pages,
// the rounds send them, and the destination stages and installs them.
TEST_F(PrecopyResilience, HugetlbSourceAndDestinationEndVerified) {
  prepare(precopyOptions("hugetlb-shared"));
  createBoth("auto");
  startSourceVm("2000", "hugetlb-shared");
  pauseAndSwitch();
  auto r = finish();
  expectVerifiedAgainstStamps(r, true);
  const nlohmann::json src = precopy(Side::kSource);
  ASSERT_TRUE(src.contains("rounds") && !src["rounds"].empty()) << src.dump();
  EXPECT_EQ(src["rounds"][0].value("pages_sent", std::uint64_t{0}), pages() / 512)
      << "round 1 sends every 2 MiB page: " << src.dump();
}

}  // namespace
}  // namespace lazymig::e2e
