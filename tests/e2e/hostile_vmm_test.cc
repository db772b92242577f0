// Hostile and unusual VMMs against a real destination agent (issue 18): a blocking uffd, fds
// that are not what the handshake says, idle and malformed connections. Each is played by
// tests/e2e/hostile_vmm.py with real kernel objects; the agent must refuse or serve it, keep
// answering its control API and stop on SIGTERM, and the real VMM must still be served.
// docs/security.md lists these tests beside the attacks they play.
#include <signal.h>
#include <unistd.h>

#include <fstream>
#include <regex>

#include "client/control_client.h"
#include "tests/e2e/e2e.h"

namespace lazymig::e2e {
namespace {

using cli::ChildProcess;
using cli::DemoRun;
using cli::Side;
using namespace std::chrono_literals;

// The hostile VMM, speaking on the destination migration's handshake socket.
Result<ChildProcess> hostileVmm(const DemoRun& run, const std::string& log,
                                std::vector<std::string> args) {
  std::vector<std::string> argv = {
      "/usr/bin/python3", LAZYMIG_SOURCE_DIR "/tests/e2e/hostile_vmm.py",
      run.dir() + "/destination-vmm/" + DemoRun::kMigrationId + ".sock"};
  argv.insert(argv.end(), args.begin(), args.end());
  return ChildProcess::spawn(argv, run.dir() + "/" + log);
}

double refusals(const DemoRun& run, const std::string& reason) {
  const std::string text = scrapeMetrics(run, Side::kDestination);
  std::smatch m;
  std::regex line("lazymig_refusals_total\\{[^}]*reason=\"" + reason + "\"[^}]*\\} ([0-9.e+]+)");
  return std::regex_search(text, m, line) ? std::stod(m[1]) : 0;
}

std::string stateOf(const DemoRun& run) {
  auto m = run.migration(Side::kDestination);
  return m ? m->value("state", "") : "";
}

// Whether the destination agent's log says `text` within a few seconds.
bool destinationLogSays(const DemoRun& run, const std::string& text) {
  return waitUntil(
      [&] { return readFile(run.logPath(Side::kDestination)).find(text) != std::string::npos; },
      10s);
}

// After the attacks, the real VMM hands over and the migration completes with every byte.
void realVmmCompletes(DemoRun& run, std::uint64_t size) {
  ASSERT_TRUE(run.startDestinationVm());
  auto vm = run.waitDestinationVm();
  ASSERT_TRUE(vm) << vm.error().message();
  expectVerified(run.report(*vm, 0), size);
}

// Both agents and the migrations, the source serving a 64 MiB guest; `extra_yaml` goes into
// both agents' configs.
Result<DemoRun> destinationWaitingForItsVmm(const std::string& extra_yaml = "") {
  auto o = baseOptions();
  o.memory = "anon";
  o.extra_yaml = extra_yaml;
  auto run = DemoRun::prepare(std::move(o));
  if (!run) return run;
  if (auto ok = run->prepareSourceMemory(); !ok) return std::unexpected(ok.error());
  if (auto ok = run->createMigrations(); !ok) return std::unexpected(ok.error());
  return run;
}

// A VMM whose uffd is blocking over `size` bytes; once `go` exists it checks every byte.
Result<ChildProcess> blockingVmm(const DemoRun& run, std::uint64_t size, const std::string& go) {
  return hostileVmm(run, "blocking-vmm.log",
                    {"blocking", std::to_string(size), run.dir() + "/guest.mem", go});
}

bool blockingVmmSays(const DemoRun& run, const std::string& text, std::chrono::seconds within) {
  return waitUntil(
      [&] { return readFile(run.dir() + "/blocking-vmm.log").find(text) != std::string::npos; },
      within);
}

// Failure 1: a uffd created without O_NONBLOCK. The agent makes it non-blocking, serves every
// fault and page, keeps its control API answering, and stops on SIGTERM.
TEST(HostileVmm, BlockingUffdIsServedAndNeverHangsTheAgent) {
  auto run = destinationWaitingForItsVmm("migration:\n  bulk_rate_limit_mib_s: 32\n");
  ASSERT_TRUE(run) << run.error().message();
  const auto& o = run->options();
  const std::string go = run->dir() + "/verify-now";
  auto vmm = blockingVmm(*run, o.size, go);
  ASSERT_TRUE(vmm) << vmm.error().message();
  EXPECT_TRUE(blockingVmmSays(*run, "touched", 60s))
      << "the faults of a VMM with a blocking uffd were never served";
  client::ControlClient control(run->controlEndpoint(Side::kDestination), 5s);
  auto health = control.get("/healthz");
  ASSERT_TRUE(health) << health.error().message();
  EXPECT_EQ(health->status, 200);
  EXPECT_TRUE(waitUntil([&] { return stateOf(*run) == "completed"; }, 120s)) << stateOf(*run);
  std::ofstream(go) << "go\n";
  ASSERT_TRUE(vmm->wait(60s).has_value());
  EXPECT_TRUE(blockingVmmSays(*run, "mismatches 0", 1s)) << "every byte must equal the source's";
  const pid_t agent = run->agentPid(Side::kDestination);
  run->killAgent(Side::kDestination, SIGTERM);
  EXPECT_NE(::kill(agent, 0), 0) << "SIGTERM did not end the destination agent";
}

// Failure 1, the control API: DELETE of a migration whose VMM has a blocking uffd answers,
// and so does /healthz afterwards.
TEST(HostileVmm, DeleteAnswersForAMigrationWithABlockingUffd) {
  auto run = destinationWaitingForItsVmm("migration:\n  bulk_rate_limit_mib_s: 4\n");
  ASSERT_TRUE(run) << run.error().message();
  const auto& o = run->options();
  auto vmm = blockingVmm(*run, o.size, run->dir() + "/never");
  ASSERT_TRUE(vmm) << vmm.error().message();
  ASSERT_TRUE(waitUntil([&] { return stateOf(*run) == "running"; }, 30s)) << stateOf(*run);
  EXPECT_TRUE(blockingVmmSays(*run, "touched", 60s));
  client::ControlClient control(run->controlEndpoint(Side::kDestination), 10s);
  auto del = control.del(std::string("/v1/migrations/") + DemoRun::kMigrationId);
  ASSERT_TRUE(del) << "DELETE never answered: " << del.error().message();
  EXPECT_EQ(del->status, 200) << del->body;
  auto health = control.get("/healthz");
  ASSERT_TRUE(health) << health.error().message();
  EXPECT_EQ(health->status, 200);
  vmm->stop();
}

// Failure 2: fds that are not what their place in the handshake says are refused naming the
// fd and what it is; the migration keeps waiting, and the real VMM then hands over.
TEST(HostileVmm, FdsThatAreNotWhatTheHandshakeSaysAreRefusedNamingThem) {
  auto run = destinationWaitingForItsVmm();
  ASSERT_TRUE(run) << run.error().message();
  const auto& o = run->options();
  struct Attempt {
    std::vector<std::string> args;
    std::string logged;
  };
  const std::vector<Attempt> attempts = {
      {{"wrong-fd", "devnull"}, "fd 0 is not a userfaultfd (it is /dev/null)"},
      {{"wrong-fd", "pipe"}, "fd 0 is not a userfaultfd (it is pipe:["},
      {{"wrong-fd", "file"}, "fd 0 is not a userfaultfd (it is /"},
      {{"wrong-fd", "memfd"}, "fd 0 is not a userfaultfd (it is /memfd:not-a-uffd"},
      {{"wrong-memory", "devnull"}, "fd 1 is not shared guest memory"},
      {{"wrong-bitmap", "pipe"}, "fd 2 is not a userfault bitmap memfd (it is pipe:["},
  };
  int n = 0;
  for (const auto& a : attempts) {
    auto vmm = hostileVmm(*run, "wrong-" + std::to_string(n++) + ".log", a.args);
    ASSERT_TRUE(vmm) << vmm.error().message();
    ASSERT_TRUE(vmm->wait(30s).has_value());
    EXPECT_TRUE(destinationLogSays(*run, a.logged))
        << a.args[0] << " " << a.args[1] << ": the log does not say '" << a.logged << "'";
    EXPECT_EQ(stateOf(*run), "waiting_for_vmm") << a.args[0] << " " << a.args[1];
  }
  EXPECT_GE(refusals(*run, "handshake_rejected"), static_cast<double>(attempts.size()));
  realVmmCompletes(*run, o.size);
}

// Weak spot: regions that add up to more (or less) than the source's memory are refused at the
// handshake, naming the sizes, and the migration keeps waiting for the right VMM -- instead of
// accepting it and failing as "source unreachable".
TEST(HostileVmm, RegionsThatAreNotTheSourcesMemoryAreRefusedAtTheHandshake) {
  auto run = destinationWaitingForItsVmm();
  ASSERT_TRUE(run) << run.error().message();
  const auto& o = run->options();
  auto vmm = hostileVmm(*run, "wrong-size.log", {"wrong-size", std::to_string(2 * o.size)});
  ASSERT_TRUE(vmm) << vmm.error().message();
  ASSERT_TRUE(vmm->wait(30s).has_value());
  const std::string want = "the VMM's regions add up to " + std::to_string(2 * o.size) +
                           " bytes in pages of 4096, which is not the memory the source serves";
  EXPECT_TRUE(destinationLogSays(*run, want)) << "the log does not say: " << want;
  EXPECT_EQ(stateOf(*run), "waiting_for_vmm");
  realVmmCompletes(*run, o.size);
}

// Weak spot: idle connections and one with malformed JSON do not delay the real VMM (each
// connection is served on its own), and the malformed one is refused without waiting for the
// handshake timeout.
TEST(HostileVmm, IdleAndMalformedConnectionsDoNotDelayTheRealVmm) {
  auto run = destinationWaitingForItsVmm("migration:\n  handshake_timeout_ms: 120000\n");
  ASSERT_TRUE(run) << run.error().message();
  const auto& o = run->options();
  std::vector<ChildProcess> squatters;
  for (const char* mode : {"idle", "idle", "garbage"}) {
    auto c =
        hostileVmm(*run, std::string(mode) + std::to_string(squatters.size()) + ".log", {mode});
    ASSERT_TRUE(c) << c.error().message();
    squatters.push_back(std::move(*c));
  }
  EXPECT_TRUE(waitUntil([&] { return refusals(*run, "handshake_malformed") >= 1; }, 60s))
      << "malformed JSON must be refused long before the 120 s handshake timeout";
  ASSERT_TRUE(run->startDestinationVm());
  EXPECT_TRUE(waitUntil([&] { return stateOf(*run) != "waiting_for_vmm"; }, 60s))
      << "the real VMM waited behind idle connections";
  auto vm = run->waitDestinationVm();
  ASSERT_TRUE(vm) << vm.error().message();
  expectVerified(run->report(*vm, 0), o.size);
  for (auto& s : squatters) s.stop();
}

}  // namespace
}  // namespace lazymig::e2e
