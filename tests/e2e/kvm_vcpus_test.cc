// The destination test VM as a real KVM virtual machine: vCPU threads in KVM_RUN executing the
// guest program, their faults on missing guest memory served through KVM's page-fault path,
// for every memory kind a VMM hands over, and across a SIGKILLed destination agent while the
// vCPUs are blocked in a fault. Skipped only where /dev/kvm cannot run a guest.
#include <signal.h>

#include <cstdio>

#include "tests/e2e/e2e.h"
#include "testvm/kvm_guest.h"

namespace lazymig::e2e {
namespace {

#define SKIP_WITHOUT_KVM()                                                       \
  do {                                                                           \
    if (auto probe = testvm::probeKvmGuest(); !probe)                            \
      GTEST_SKIP() << "KVM cannot run a guest here: " << probe.error().message() \
                   << " (the test VM's vCPUs would be host threads)";            \
  } while (0)

// The guest's own view of a run it did on KVM: it ran there, read pages and found them all
// as written, and the VMM's check of every page agreed.
void expectKvmGuestVerified(const nlohmann::json& r, std::uint64_t size, bool one_lifetime) {
  expectVerified(r, size, one_lifetime);
  EXPECT_EQ(r.value("vcpus", ""), "kvm") << r.dump();
  EXPECT_GT(r.value("guest_checked_reads", 0), 0) << r.dump();
  EXPECT_EQ(r.value("guest_mismatches", 1), 0) << r.dump();
}

class KvmGuestMemory : public ::testing::TestWithParam<std::string> {};

TEST_P(KvmGuestMemory, MigratesUnderARunningKvmGuest) {
  SKIP_WITHOUT_KVM();
  auto o = baseOptions();
  o.memory = GetParam();
  o.pattern = "write";
  auto r = cli::runDemo(o);
  if (!r && r.error().message().find("nr_hugepages") != std::string::npos)
    GTEST_SKIP() << "no huge pages: " << r.error().message();
  ASSERT_TRUE(r) << r.error().message();
  expectKvmGuestVerified(*r, o.size, true);
  EXPECT_GT(r->value("demand_faults", 0), 0) << "the KVM vCPUs must have faulted: " << r->dump();
  if (o.memory == "guest_memfd" && r->value("guest_memfd_backing", "") == "kvm") {
    // KVM maps the guest_memfd itself; the guest asks for each missing page first.
    EXPECT_EQ(r->value("memslot_backing", ""), "guest_memfd") << r->dump();
    EXPECT_GT(r->value("fault_requests", 0), 0) << r->dump();
    EXPECT_EQ(r->value("bitmap_bits_set", 1), 0) << r->dump();
  } else {
    EXPECT_EQ(r->value("memslot_backing", ""), "vmm-mapping") << r->dump();
  }
}

INSTANTIATE_TEST_SUITE_P(Kinds, KvmGuestMemory,
                         ::testing::Values("anon", "memfd", "memfd-minor", "guest_memfd", "hugetlb",
                                           "hugetlb-shared", "hugetlb-minor"),
                         [](const auto& param_info) {
                           std::string name = param_info.param;
                           for (char& c : name)
                             if (c == '-') c = '_';
                           return name;
                         });

// The source agent is stopped (SIGSTOP) once the destination is connected, so no page can
// arrive: every vCPU that faults stays blocked inside KVM_RUN on the uffd. The destination
// agent is SIGKILLed while they are, restarted, and the source let go: the restarted agent
// takes over the uffd the test VM kept, answers the blocked faults and finishes.
TEST(KvmVcpus, DestinationAgentKilledWhileVcpusAreBlockedInAFaultRecovers) {
  SKIP_WITHOUT_KVM();
  auto o = baseOptions();
  o.size = 128ull << 20;
  o.pattern = "random";
  auto run = cli::DemoRun::prepare(o);
  ASSERT_TRUE(run) << run.error().message();
  ASSERT_TRUE(run->prepareSourceMemory());
  ASSERT_TRUE(run->createMigrations());
  run->signalAgent(cli::Side::kSource, SIGSTOP);
  struct Resume {
    cli::DemoRun& run;
    ~Resume() { run.signalAgent(cli::Side::kSource, SIGCONT); }
  } resume{*run};
  ASSERT_TRUE(run->startDestinationVm());
  // A vCPU blocked on a fault nobody can answer makes no other: one fault per vCPU.
  ASSERT_TRUE(waitUntil(
      [&] { return progressOf(*run, cli::Side::kDestination, "demand_faults") >= o.vcpus; },
      std::chrono::seconds(60)));
  EXPECT_FALSE(run->destinationVmExited());
  run->killAgent(cli::Side::kDestination, SIGKILL);
  ASSERT_TRUE(run->startAgent(cli::Side::kDestination));
  run->signalAgent(cli::Side::kSource, SIGCONT);
  auto vm = run->waitDestinationVm();
  ASSERT_TRUE(vm) << vm.error().message();
  auto r = run->report(*vm, 0);
  expectKvmGuestVerified(r, o.size, false);
  auto m = run->migration(cli::Side::kDestination);
  ASSERT_TRUE(m);
  EXPECT_TRUE(m->value("resumed_after_restart", false)) << m->dump();
}

// The guest's own view: its rate not migrating (the same guest run again once all memory is
// present), during and after the migration, the work it lost, and the plot of it.
TEST(KvmVcpus, DemoReportsTheGuestRateAndPlotsIt) {
  SKIP_WITHOUT_KVM();
  auto o = baseOptions();
  o.guest_baseline = true;
  o.plot = ::testing::TempDir() + "/kvm-guest.svg";
  std::remove(o.plot.c_str());
  auto r = cli::runDemo(o);
  ASSERT_TRUE(r) << r.error().message();
  expectKvmGuestVerified(*r, o.size, true);
  const auto& rate = (*r)["guest_rate"];
  EXPECT_GT(rate.value("before", 0.0), 0) << r->dump();
  EXPECT_GT(rate.value("during", 0.0), 0) << r->dump();
  EXPECT_TRUE((*r)["degradation"].is_number()) << r->dump();
  EXPECT_GT(r->value("vcpu_stall_share", 0.0), 0)
      << "the KVM vCPUs waited in faults: " << r->dump();
  EXPECT_EQ(r->value("plot", ""), o.plot);
  const std::string svg = readFile(o.plot);
  EXPECT_NE(svg.find("KVM vCPUs"), std::string::npos);
  EXPECT_NE(svg.find("not migrating"), std::string::npos);
}

// --vcpus-as-threads keeps the host-thread stand-in, and the report says so.
TEST(KvmVcpus, ThreadStandInOnRequest) {
  auto o = baseOptions();
  o.vcpus_as_threads = true;
  auto r = cli::runDemo(o);
  ASSERT_TRUE(r) << r.error().message();
  expectVerified(*r, o.size);
  EXPECT_EQ(r->value("vcpus", ""), "threads") << r->dump();
  EXPECT_EQ(r->value("vcpus_threads_because", ""), "--vcpus-as-threads") << r->dump();
}

}  // namespace
}  // namespace lazymig::e2e
