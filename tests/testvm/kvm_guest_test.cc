// The KVM test VM's guest program on real KVM vCPUs, without a migration: what it checks,
// what it writes, how far its page tables reach, and a vCPU blocked on a uffd inside KVM_RUN.
#include "testvm/kvm_guest.h"

#include <poll.h>

#include <gtest/gtest.h>

#include <algorithm>
#include <atomic>
#include <cstring>
#include <thread>

#include "sys/uffd.h"
#include "testvm/pattern.h"

namespace lazymig::testvm {
namespace {

// Skips the test, saying why, where /dev/kvm cannot run a guest.
#define SKIP_WITHOUT_KVM()                                                        \
  do {                                                                            \
    if (auto probe = probeKvmGuest(); !probe)                                     \
      GTEST_SKIP() << "KVM cannot run a guest here: " << probe.error().message(); \
  } while (0)

GuestMemory filled(std::uint64_t bytes, const Pattern& pattern) {
  auto mem = GuestMemory::create(MemoryKind::kAnonymous, bytes, 1);
  EXPECT_TRUE(mem) << mem.error().message();
  for (std::uint64_t p = 0; p < mem->pageCount(); ++p)
    pattern.fillPage(p, std::span(mem->page(p), kPageSize));
  return std::move(*mem);
}

WorkloadOptions options(AccessPattern pattern, unsigned vcpus, std::uint64_t accesses) {
  WorkloadOptions o;
  o.pattern = pattern;
  o.vcpus = vcpus;
  o.accesses = accesses;
  return o;
}

WorkloadResult runGuest(const GuestMemory& mem, const WorkloadOptions& o) {
  auto guest = KvmGuest::create(mem, nullptr, o);
  EXPECT_TRUE(guest) << guest.error().message();
  auto work = (*guest)->run(nullptr, false);
  EXPECT_TRUE(work) << work.error().message();
  return std::move(*work);
}

TEST(KvmGuest, EveryPatternRunsCleanOnIntactMemory) {
  SKIP_WITHOUT_KVM();
  const Pattern pattern;
  GuestMemory mem = filled(8 * kMiB, pattern);
  for (AccessPattern p : {AccessPattern::kSequential, AccessPattern::kRandom, AccessPattern::kHot,
                          AccessPattern::kWrite}) {
    WorkloadResult work = runGuest(mem, options(p, 2, 300));
    EXPECT_EQ(work.vcpu_kind, "kvm");
    EXPECT_EQ(work.accesses, 600u);
    EXPECT_EQ(work.guest_mismatches, 0u) << "pattern " << static_cast<int>(p);
    EXPECT_EQ(work.guest_checked_reads + work.writes, 600u);
    ASSERT_FALSE(work.progress.empty());
    EXPECT_EQ(work.progress.back().second, 600u);
    if (p == AccessPattern::kWrite) {
      EXPECT_EQ(work.writes, 300u);
      // The guest's stamps are the ones the VMM expects: its full check passes.
      VerifyResult v = verifyMemory(mem, pattern, work);
      EXPECT_EQ(v.mismatches, 0u);
      for (auto [page, gen] : work.stamps) EXPECT_LT(page, mem.pageCount());
    }
  }
}

// The baseline run: the same vCPUs enter the program from its start again, and its stamps
// (generations counted from 1 again) land on top of the first run's.
TEST(KvmGuest, RunsAgainFromTheStart) {
  SKIP_WITHOUT_KVM();
  const Pattern pattern;
  GuestMemory mem = filled(4 * kMiB, pattern);
  auto guest = KvmGuest::create(mem, nullptr, options(AccessPattern::kWrite, 2, 400));
  ASSERT_TRUE(guest) << guest.error().message();
  auto first = (*guest)->run(nullptr, false);
  ASSERT_TRUE(first) << first.error().message();
  auto second = (*guest)->run(nullptr, false);
  ASSERT_TRUE(second) << second.error().message();
  EXPECT_EQ(second->accesses, 800u);
  EXPECT_EQ(second->writes, first->writes);
  EXPECT_EQ(second->guest_mismatches, 0u);
  WorkloadResult both = *first;
  for (auto [page, gen] : second->stamps) both.stamps[page] = gen;
  EXPECT_EQ(verifyMemory(mem, pattern, both).mismatches, 0u);
}

TEST(KvmGuest, GuestReportsExactlyThePagesNotAsWritten) {
  SKIP_WITHOUT_KVM();
  const Pattern pattern;
  GuestMemory mem = filled(4 * kMiB, pattern);
  std::vector<std::uint64_t> wrong;
  for (std::uint64_t p = 1; p < mem.pageCount() && wrong.size() < 3; p += 97) {
    if (pattern.isZeroPage(p)) continue;
    wrong.push_back(p);
  }
  ASSERT_EQ(wrong.size(), 3u);
  wrong.push_back(0);
  // A flipped bit in the checked word, a page lost to zeros, and a zero page that is not.
  mem.page(wrong[0])[kPageSize - 8] ^= std::byte{4};
  std::memset(mem.page(wrong[1]), 0, kPageSize);
  std::uint64_t zero_page = 0;
  while (!pattern.isZeroPage(zero_page)) ++zero_page;
  mem.page(zero_page)[kPageSize - 1] = std::byte{1};
  wrong = {wrong[0], wrong[1], zero_page};
  std::sort(wrong.begin(), wrong.end());
  // One vCPU reading every page once, in order.
  WorkloadResult work = runGuest(mem, options(AccessPattern::kSequential, 1, mem.pageCount()));
  EXPECT_EQ(work.guest_checked_reads, mem.pageCount());
  EXPECT_EQ(work.guest_mismatches, 3u);
  EXPECT_EQ(work.guest_mismatch_pages, wrong);
}

TEST(KvmGuest, PageTablesReachA16GiBGuest) {
  SKIP_WITHOUT_KVM();
  // All-zero pages, so that nothing needs filling: the guest reads the kernel's zero page.
  auto mem = GuestMemory::create(MemoryKind::kAnonymous, 16 * kGiB, 2);
  ASSERT_TRUE(mem) << mem.error().message();
  WorkloadOptions o = options(AccessPattern::kSequential, 4, 64);
  o.zero_ratio = 1.0;
  WorkloadResult work = runGuest(*mem, o);
  EXPECT_EQ(work.guest_mismatches, 0u);
  EXPECT_EQ(work.guest_checked_reads, 256u);
  // A vCPU's slice starts a quarter of the way in: the last one reads above 12 GiB.
  mem->page(mem->pageCount() * 3 / 4 + 10)[kPageSize - 8] = std::byte{1};
  work = runGuest(*mem, o);
  EXPECT_EQ(work.guest_mismatch_pages, std::vector<std::uint64_t>{mem->pageCount() * 3 / 4 + 10});
}

TEST(KvmGuest, VcpuBlocksInKvmRunUntilTheUffdHandlerInstallsThePage) {
  SKIP_WITHOUT_KVM();
  const Pattern pattern;
  auto mem = GuestMemory::create(MemoryKind::kAnonymous, 2 * kMiB, 1);
  ASSERT_TRUE(mem) << mem.error().message();
  auto uffd = sys::Uffd::open(0);
  ASSERT_TRUE(uffd) << uffd.error().message();
  const auto region = mem->mappings().front();
  ASSERT_TRUE(uffd->registerRange(HostAddr{region.base_host_virt_addr}, Bytes{region.size},
                                  sys::RegisterMode::kMissing));
  std::atomic<bool> stop{false};
  std::atomic<std::uint64_t> faults{0};
  std::thread handler([&] {
    alignas(8) std::byte page[kPageSize];
    while (!stop) {
      pollfd p{uffd->pollFd(), POLLIN, 0};
      if (::poll(&p, 1, 20) <= 0) continue;
      uffd_msg msgs[16];
      auto n = uffd->readEvents(msgs);
      ASSERT_TRUE(n) << n.error().message();
      for (std::size_t i = 0; i < *n; ++i) {
        if (msgs[i].event != UFFD_EVENT_PAGEFAULT) continue;
        const std::uint64_t at = msgs[i].arg.pagefault.address & ~std::uint64_t{4095};
        const std::uint64_t index = (at - region.base_host_virt_addr) / kPageSize;
        pattern.fillPage(index, page);
        ASSERT_TRUE(uffd->copy(HostAddr{at}, page, Bytes{kPageSize}));
        faults.fetch_add(1);
      }
    }
  });
  WorkloadResult work = runGuest(*mem, options(AccessPattern::kSequential, 2, 256));
  stop = true;
  handler.join();
  // Each vCPU's first touch of each of its 256 pages faulted through KVM to the handler.
  EXPECT_EQ(faults.load(), 512u);
  EXPECT_EQ(work.guest_mismatches, 0u);
  EXPECT_EQ(work.guest_checked_reads, 512u);
}

}  // namespace
}  // namespace lazymig::testvm
