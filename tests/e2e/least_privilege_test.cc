// The agent needs no capability for a migration, and only CAP_SYS_PTRACE to take a VMM's
// userfaultfd back after a restart (pidfd_getfd on a VMM with capabilities the agent lacks).
// The agents run as root with their capability bounding set cut down by setpriv, so that
// what they may do is what production's systemd unit and DaemonSet grant.
#include <signal.h>

#include <fstream>

#include "tests/e2e/e2e.h"

namespace lazymig::e2e {
namespace {

using cli::DemoRun;
using cli::Side;

std::vector<std::string> onlyCapabilities(const std::string& caps) {
  return {"/usr/bin/setpriv", "--bounding-set=-all" + caps, "--inh-caps=-all", "--"};
}

// CapEff from /proc/<pid>/status, as hex.
std::string effectiveCapabilities(pid_t pid) {
  std::ifstream in("/proc/" + std::to_string(pid) + "/status");
  for (std::string line; std::getline(in, line);) {
    if (line.rfind("CapEff:", 0) == 0) return line.substr(line.find_first_not_of(" \t", 7));
  }
  return "?";
}

TEST(LeastPrivilege, AgentsWithNoCapabilityMigrate) {
  auto o = baseOptions();
  o.memory = "memfd";
  o.agent_prefix = onlyCapabilities("");
  auto run = DemoRun::prepare(o);
  ASSERT_TRUE(run) << run.error().message();
  for (Side s : {Side::kSource, Side::kDestination}) {
    EXPECT_EQ(effectiveCapabilities(run->agentPid(s)), "0000000000000000")
        << "the agent kept capabilities";
  }
  ASSERT_TRUE(run->prepareSourceMemory());
  ASSERT_TRUE(run->createMigrations());
  ASSERT_TRUE(run->startDestinationVm());
  auto vm = run->waitDestinationVm();
  ASSERT_TRUE(vm) << vm.error().message();
  expectVerified(run->report(*vm, 0), o.size);
}

TEST(LeastPrivilege, RestartRecoveryNeedsOnlyCapSysPtrace) {
  auto o = baseOptions();
  o.size = 128ull << 20;
  o.extra_yaml = "migration:\n  bulk_rate_limit_mib_s: 32\n  checkpoint_interval_ms: 20\n";
  o.agent_prefix = onlyCapabilities(",+sys_ptrace");
  auto run = DemoRun::prepare(o);
  ASSERT_TRUE(run) << run.error().message();
  // CAP_SYS_PTRACE is bit 19.
  EXPECT_EQ(effectiveCapabilities(run->agentPid(Side::kDestination)), "0000000000080000");
  ASSERT_TRUE(run->prepareSourceMemory());
  ASSERT_TRUE(run->createMigrations());
  ASSERT_TRUE(run->startDestinationVm());
  const std::uint64_t total = o.size / 4096;
  ASSERT_TRUE(
      waitUntil([&] { return progressOf(*run, Side::kDestination, "pages_installed") > total / 3; },
                std::chrono::seconds(60)));
  run->killAgent(Side::kDestination, SIGKILL);
  ASSERT_TRUE(run->startAgent(Side::kDestination));
  auto vm = run->waitDestinationVm();
  ASSERT_TRUE(vm) << vm.error().message();
  expectVerified(run->report(*vm, 0), o.size, false);
  auto m = run->migration(Side::kDestination);
  ASSERT_TRUE(m);
  EXPECT_TRUE(m->value("resumed_after_restart", false)) << m->dump();
}

// Without CAP_SYS_PTRACE the kernel hides a root VMM's fds from the agent: recovery after a
// restart fails loudly and says what is missing (rather than leaving the VM blocked).
TEST(LeastPrivilege, RestartRecoveryWithoutCapSysPtraceFailsSayingWhy) {
  auto o = baseOptions();
  o.size = 128ull << 20;
  o.timeout_s = 60;
  o.extra_yaml = "migration:\n  bulk_rate_limit_mib_s: 32\n";
  o.agent_prefix = onlyCapabilities("");
  auto run = migrationUnderWay(o);
  ASSERT_TRUE(run) << run.error().message();
  ASSERT_TRUE(waitUntil([&] { return progressOf(*run, Side::kDestination, "pages_installed") > 0; },
                        std::chrono::seconds(60)));
  run->killAgent(Side::kDestination, SIGKILL);
  ASSERT_TRUE(run->startAgent(Side::kDestination));
  nlohmann::json m;
  ASSERT_TRUE(waitUntil(
      [&] {
        auto got = run->migration(Side::kDestination);
        if (got) m = *got;
        return m.value("state", "") == "failed";
      },
      std::chrono::seconds(30)))
      << m.dump();
  EXPECT_NE(m.value("reason", "").find("CAP_SYS_PTRACE"), std::string::npos) << m.dump();
}

}  // namespace
}  // namespace lazymig::e2e
