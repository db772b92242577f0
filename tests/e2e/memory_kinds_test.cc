// Every kind of guest memory a VMM hands over, migrated end to end with every verifier:
// anonymous and memfd (missing mode, UFFDIO_COPY), memfd in minor mode (write + CONTINUE),
// guest_memfd (write through the agent's mapping + userfault bitmap, FaultRequests and uffd
// faults), and hugetlbfs 2 MiB pages, private and shared. The minor-mode and guest_memfd runs
// have the guest writing pages while a throttled bulk stream is still delivering them: a page
// written twice would overwrite a guest write and fail verification.
#include <fcntl.h>
#include <signal.h>
#include <unistd.h>

#include <cstring>
#include <fstream>
#include <string>

#include "sys/kvm.h"
#include "tests/e2e/e2e.h"

namespace lazymig::e2e {
namespace {

// Slow enough that the bulk stream is still running while the vCPUs write.
constexpr const char* kThrottledBulk = "migration:\n  bulk_rate_limit_mib_s: 24\n";

Result<nlohmann::json> migrate(const cli::DemoOptions& o) { return cli::runDemo(o); }

// Why this host cannot give a guest_memfd (MMAP | INIT_SHARED) from KVM; empty when it can.
// /dev/kvm may exist on a host whose KVM cannot create a VM, so asking the device is not enough.
std::string noGuestMemfdBecause() {
  auto fd = sys::createMappableGuestMemfd(Bytes{4096});
  return fd ? "" : fd.error().message();
}

bool hugePagesUnavailable(const Error& e) {
  return e.message().find("nr_hugepages") != std::string::npos;
}

// A write-heavy guest racing the bulk stream, with the checks that prove no page was
// populated twice: the guest's writes all survive and every page arrived exactly once.
void expectWritesSurvivedTheBulkStream(const nlohmann::json& r, std::uint64_t size) {
  expectVerified(r, size);
  EXPECT_GT(r.value("guest_writes", 0), 1000) << r.dump();
  EXPECT_GT(r.value("bulk_pages", 0), 0) << "the bulk stream must have delivered pages";
  EXPECT_GT(r.value("demand_pages", 0), 0) << "vCPUs must have faulted while it ran";
}

cli::DemoOptions racingWrites(const std::string& memory) {
  auto o = baseOptions();
  o.memory = memory;
  o.pattern = "write";
  o.vcpus = 4;
  o.accesses = 6000;
  o.extra_yaml = kThrottledBulk;
  return o;
}

TEST(MemoryKinds, SharedMemoryInMinorModeWithGuestWritesRacingTheBulkStream) {
  auto o = racingWrites("memfd-minor");
  auto r = migrate(o);
  ASSERT_TRUE(r) << r.error().message();
  expectWritesSurvivedTheBulkStream(*r, o.size);
  EXPECT_EQ(r->value("population_path", ""), "shmem_minor_continue") << r->dump();
}

// This kernel refuses uffd registration on a guest_memfd, so a VMM's vCPU faults reach the
// agent only as FaultRequests: the stand-in VMM registers nothing, as on this kernel.
TEST(MemoryKinds, GuestMemfdByFaultRequestsOnlyWithGuestWritesRacingTheBulkStream) {
  auto o = racingWrites("guest_memfd");
  o.no_uffd_register = true;
  auto r = migrate(o);
  ASSERT_TRUE(r) << r.error().message();
  expectWritesSurvivedTheBulkStream(*r, o.size);
  // A memfd stand-in takes pwrite; a mainline guest_memfd (real KVM) is written through a mapping.
  EXPECT_EQ(r->value("population_path", ""),
            r->value("guest_memfd_backing", "") == "kvm" ? "guest_memfd_mmap" : "guest_memfd_write")
      << r->dump();
  EXPECT_GT(r->value("fault_requests", 0), 0) << r->dump();
  EXPECT_EQ(r->value("fault_replies", 0), r->value("fault_requests", -1)) << r->dump();
  EXPECT_EQ(r->value("bitmap_bits_set", 1), 0) << r->dump();
}

// Where the registration is allowed, faults arrive both ways at once. A memfd stands in for the
// guest_memfd even where /dev/kvm is there: it takes the registration that this kernel refuses
// on a real guest_memfd, so both routes race on one page state.
TEST(MemoryKinds, GuestMemfdByFaultRequestsAndUffdFaults) {
  auto o = racingWrites("guest_memfd");
  o.memfd_standin = true;
  auto r = migrate(o);
  ASSERT_TRUE(r) << r.error().message();
  expectWritesSurvivedTheBulkStream(*r, o.size);
  EXPECT_TRUE(r->value("uffd_registered", false)) << r->dump();
  EXPECT_GT(r->value("fault_requests", 0), 0) << r->dump();
  EXPECT_EQ(r->value("fault_replies", 0), r->value("fault_requests", -1)) << r->dump();
  EXPECT_GT(r->value("demand_faults", 0), r->value("fault_requests", 0))
      << "uffd faults are counted beside FaultRequests: " << r->dump();
}

// A real guest_memfd from /dev/kvm, where the host has KVM.
TEST(MemoryKinds, RealGuestMemfdFromKvm) {
  if (auto why = noGuestMemfdBecause(); !why.empty()) {
    GTEST_SKIP() << "no guest_memfd from KVM on this host (" << why
                 << "); the guest_memfd path is covered on a memfd stand-in above";
  }
  auto o = racingWrites("guest_memfd");
  o.require_kvm = true;
  auto r = migrate(o);
  ASSERT_TRUE(r) << r.error().message();
  expectWritesSurvivedTheBulkStream(*r, o.size);
  EXPECT_EQ(r->value("guest_memfd_backing", ""), "kvm") << r->dump();
  EXPECT_EQ(r->value("bitmap_bits_set", 1), 0) << r->dump();
  EXPECT_EQ(r->value("fault_replies", 0), r->value("fault_requests", -1)) << r->dump();
}

// Capability detection on a real guest_memfd: what the agent probed must be what the VMM met.
// On Linux 6.18 the VMM's UFFDIO_REGISTER on its guest_memfd mapping fails and pwrite is
// refused, so the agent must say "no" to both, name the failing call, and fall back to writing
// through its own mapping with every fault arriving as a FaultRequest.
TEST(MemoryKinds, CapabilitiesProbedOnARealGuestMemfdMatchWhatTheVmmMet) {
  if (auto why = noGuestMemfdBecause(); !why.empty()) {
    GTEST_SKIP() << "no guest_memfd from KVM on this host (" << why << ")";
  }
  auto o = baseOptions();
  o.memory = "guest_memfd";
  o.require_kvm = true;
  auto done = runToTheEnd(o);
  ASSERT_TRUE(done) << done.error().message();
  auto* run = &done->run;
  const auto* vm = &done->vm;
  auto r = run->report(*vm, 0);
  expectVerified(r, o.size);
  auto m = run->migration(cli::Side::kDestination);
  ASSERT_TRUE(m);
  const auto& caps = (*m)["capabilities"];
  const bool registered = r.value("uffd_registered", false);
  EXPECT_EQ(caps["uffd_on_guest_memfd"].value("supported", ""), registered ? "yes" : "no")
      << "the VMM " << (registered ? "registered" : "could not register")
      << " its guest_memfd mapping: " << caps.dump();
  EXPECT_NE(caps["uffd_on_guest_memfd"].value("detail", "").find("UFFDIO_REGISTER"),
            std::string::npos)
      << caps.dump();
  EXPECT_EQ(caps["guest_memfd_mmap"].value("supported", ""), "yes") << caps.dump();
  const bool writable = caps["guest_memfd_write"].value("supported", "") == "yes";
  EXPECT_EQ(m->value("population_path", ""), writable ? "guest_memfd_write" : "guest_memfd_mmap")
      << m->dump();
  if (!registered) {
    EXPECT_EQ(r.value("demand_faults", 0), r.value("fault_requests", -1))
        << "without the registration every vCPU fault is a FaultRequest: " << r.dump();
  }
}

struct HugeCase {
  std::string memory;
  std::string pattern;
};

class HugePages : public ::testing::TestWithParam<HugeCase> {};

TEST_P(HugePages, InstalledAndStreamedInWholeHugePages) {
  auto o = baseOptions();
  o.memory = GetParam().memory;
  o.pattern = GetParam().pattern;
  o.regions = 2;
  auto r = migrate(o);
  if (!r && hugePagesUnavailable(r.error())) GTEST_SKIP() << r.error().message();
  ASSERT_TRUE(r) << r.error().message();
  expectVerified(*r, o.size);
  EXPECT_EQ(r->value("page_size", 0), 2 << 20) << r->dump();
  // Minor mode on hugetlbfs: it takes no write(), so pages go in through the agent's mapping.
  EXPECT_EQ(r->value("population_path", ""),
            o.memory == "hugetlb-minor" ? "shmem_minor_continue" : "uffd_copy")
      << r->dump();
}

INSTANTIATE_TEST_SUITE_P(
    Hugetlbfs, HugePages,
    ::testing::Values(HugeCase{"hugetlb", "random"}, HugeCase{"hugetlb", "write"},
                      HugeCase{"hugetlb-shared", "random"}, HugeCase{"hugetlb-shared", "write"},
                      HugeCase{"hugetlb-minor", "random"}, HugeCase{"hugetlb-minor", "write"}),
    [](const auto& param_info) {
      std::string name = param_info.param.memory + "_" + param_info.param.pattern;
      for (char& c : name)
        if (c == '-') c = '_';
      return name;
    });

// What the agent found out about this kernel, and the path it took, in the migration status.
TEST(MemoryKinds, StatusNamesThePathAndWhatTheKernelCanDo) {
  auto o = baseOptions();
  o.memory = "guest_memfd";
  o.no_uffd_register = true;
  auto done = runToTheEnd(o);
  ASSERT_TRUE(done) << done.error().message();
  auto* run = &done->run;
  const auto* vm = &done->vm;
  EXPECT_TRUE(vm->value("verified", false)) << vm->dump();
  auto m = run->migration(cli::Side::kDestination);
  ASSERT_TRUE(m);
  EXPECT_EQ(m->value("population_path", ""), vm->value("guest_memfd_backing", "") == "kvm"
                                                 ? "guest_memfd_mmap"
                                                 : "guest_memfd_write")
      << m->dump();
  EXPECT_EQ((*m)["memory"].value("write_method", ""),
            vm->value("guest_memfd_backing", "") == "kvm" ? "mmap" : "pwrite")
      << m->dump();
  const auto& memory = (*m)["memory"];
  EXPECT_EQ(memory.value("handshake", ""), "guest_memfd") << m->dump();
  EXPECT_EQ(memory.value("userfault_bits_set", 1), 0) << m->dump();
  const auto& caps = (*m)["capabilities"];
  // Probed on this kernel: minor faults on shmem work; a guest_memfd needs /dev/kvm to probe.
  EXPECT_EQ(caps["uffd_minor_shmem"].value("supported", ""), "yes") << caps.dump();
  for (const char* k : {"guest_memfd_mmap", "guest_memfd_write", "uffd_on_guest_memfd"}) {
    ASSERT_TRUE(caps.contains(k)) << k;
    EXPECT_FALSE(caps[k].value("detail", "").empty()) << k;
  }
  if (!noGuestMemfdBecause().empty()) {
    EXPECT_EQ(caps["uffd_on_guest_memfd"].value("supported", ""), "unknown") << caps.dump();
    EXPECT_EQ(caps["uffd_on_guest_memfd"].value("detail", "").rfind("not probed", 0), 0u)
        << caps.dump();
  } else {
    // Linux 6.18 as probed: mmap yes, write() and uffd registration no.
    EXPECT_EQ(caps["guest_memfd_mmap"].value("supported", ""), "yes") << caps.dump();
    EXPECT_NE(caps["uffd_on_guest_memfd"].value("supported", ""), "unknown") << caps.dump();
  }
}

// Minor mode keeps invariant 4: a destination agent SIGKILLed mid-bulk takes the uffd and the
// memfd back from the VMM and finishes, every guest write intact. Pages the dead agent wrote
// into the page cache but had not mapped are missing in the VMM's page table, so they are
// written again -- safe, because the guest could not have seen them.
TEST(MemoryKinds, MinorModeDestinationKilledMidBulkRecovers) {
  auto o = racingWrites("memfd-minor");
  o.size = 128ull << 20;
  o.extra_yaml = std::string(kThrottledBulk) + "  checkpoint_interval_ms: 20\n";
  auto run = migrationUnderWay(o);
  ASSERT_TRUE(run) << run.error().message();
  ASSERT_TRUE(waitUntil(
      [&] {
        return progressOf(*run, cli::Side::kDestination, "pages_installed") > o.size / 4096 / 3;
      },
      std::chrono::seconds(60)));
  run->killAgent(cli::Side::kDestination, SIGKILL);
  ASSERT_TRUE(run->startAgent(cli::Side::kDestination));
  auto vm = run->waitDestinationVm();
  ASSERT_TRUE(vm) << vm.error().message();
  auto r = run->report(*vm, 0);
  expectVerified(r, o.size, /*one_lifetime=*/false);
  auto m = run->migration(cli::Side::kDestination);
  ASSERT_TRUE(m);
  EXPECT_TRUE(m->value("resumed_after_restart", false)) << m->dump();
  EXPECT_EQ(m->value("population_path", ""), "shmem_minor_continue") << m->dump();
}

// Whether the agent process maps the test VM's guest memory fd.
bool agentMapsGuestMemory(pid_t agent) {
  std::ifstream maps("/proc/" + std::to_string(agent) + "/maps");
  std::string line;
  while (std::getline(maps, line)) {
    if (line.find("memfd:lazymig-testvm-guest") != std::string::npos) return true;
  }
  return false;
}

// A write-path destination maps the guest's memory; once the migration is over the agent must
// let go of it (and of the migration's threads), or every migrated VM's memory would stay
// allocated on the host after the VM is gone. Its report stays readable.
TEST(MemoryKinds, FinishedMigrationLetsGoOfGuestMemoryAndKeepsItsReport) {
  auto o = baseOptions();
  o.memory = "memfd-minor";
  o.extra_yaml = "migration:\n  stall_timeout_ms: 1000\n";
  auto run = migrationUnderWay(o);
  ASSERT_TRUE(run) << run.error().message();
  const pid_t agent = run->agentPid(cli::Side::kDestination);
  ASSERT_TRUE(waitUntil([&] { return agentMapsGuestMemory(agent); }, std::chrono::seconds(30)))
      << "the minor-mode destination writes through its own mapping of the memfd";
  auto vm = run->waitDestinationVm();
  ASSERT_TRUE(vm) << vm.error().message();
  EXPECT_TRUE(vm->value("verified", false)) << vm->dump();
  EXPECT_TRUE(waitUntil([&] { return !agentMapsGuestMemory(agent); }, std::chrono::seconds(30)))
      << "the agent still maps the guest's memory after the migration finished";
  auto m = run->migration(cli::Side::kDestination);
  ASSERT_TRUE(m);
  EXPECT_EQ(m->value("state", ""), "completed") << m->dump();
  EXPECT_EQ(m->value("population_path", ""), "shmem_minor_continue") << m->dump();
  EXPECT_EQ((*m)["progress"].value("pages_remaining", 1), 0) << m->dump();
}

// guest_memfd cannot be recovered (its FaultRequest socket died with the agent, and the VMM
// does not connect again): the restarted agent says so instead of leaving vCPUs waiting.
TEST(MemoryKinds, GuestMemfdDestinationKilledFailsSayingWhy) {
  auto o = racingWrites("guest_memfd");
  o.no_uffd_register = true;
  auto run = migrationUnderWay(o);
  ASSERT_TRUE(run) << run.error().message();
  ASSERT_TRUE(
      waitUntil([&] { return progressOf(*run, cli::Side::kDestination, "pages_installed") > 100; },
                std::chrono::seconds(60)));
  run->killAgent(cli::Side::kDestination, SIGKILL);
  ASSERT_TRUE(run->startAgent(cli::Side::kDestination));
  nlohmann::json m;
  ASSERT_TRUE(waitUntil(
      [&] {
        auto got = run->migration(cli::Side::kDestination);
        if (got) m = *got;
        return got && got->value("state", "") == "failed";
      },
      std::chrono::seconds(30)))
      << m.dump();
  EXPECT_NE(m.value("reason", "").find("guest_memfd"), std::string::npos) << m.dump();
}

}  // namespace
}  // namespace lazymig::e2e
