// The live source VM: its writes are seen by write tracking -- host threads' and KVM vCPUs'
// -- and a real `lazymig-testvm source --live` process hands over what an agent needs to copy
// its memory in rounds while it runs, then pauses on SIGUSR1.
#include <fcntl.h>
#include <gtest/gtest.h>
#include <signal.h>
#include <unistd.h>

#include <atomic>
#include <chrono>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <sstream>
#include <thread>

#include "cli/child_process.h"
#include "sys/mapping.h"
#include "sys/unix_socket.h"
#include "sys/write_tracker.h"
#include "testvm/kvm_guest.h"
#include "testvm/live_source.h"
#include "testvm/live_vcpus.h"
#include "testvm/pattern.h"
#include "testvm/workload.h"
#include "vmm/source_handover.h"

namespace lazymig::testvm {
namespace {

using Clock = std::chrono::steady_clock;

GuestMemory filledMemfd(std::uint64_t bytes, const Pattern& pattern) {
  auto mem = GuestMemory::create(MemoryKind::kMemfd, bytes, 1);
  EXPECT_TRUE(mem) << mem.error().message();
  for (std::uint64_t p = 0; p < mem->pageCount(); ++p)
    pattern.fillPage(p, std::span(mem->page(p), kPageSize));
  return std::move(*mem);
}

sys::WriteTracker track(const GuestMemory& mem) {
  std::vector<sys::TrackedRange> ranges;
  for (const auto& r : mem.mappings())
    ranges.push_back({HostAddr{r.base_host_virt_addr}, Bytes{r.size}});
  auto tracker = sys::WriteTracker::trackOwnMemory(std::move(ranges), Bytes{kPageSize});
  EXPECT_TRUE(tracker) << tracker.error().message();
  return std::move(*tracker);
}

std::vector<bool> writtenPages(sys::WriteTracker& tracker, std::uint64_t pages) {
  std::vector<bool> out(pages);
  std::vector<sys::PageRun> runs;
  auto ok = tracker.takeWritten(0, runs);
  EXPECT_TRUE(ok) << ok.error().message();
  for (const auto& run : runs)
    for (std::uint64_t p = run.first; p < run.first + run.count; ++p) out[p] = true;
  return out;
}

TEST(LiveVcpus, EveryStampedPageIsSeenByWriteTrackingAndThePauseStopsTheWrites) {
  const Pattern pattern;
  GuestMemory mem = filledMemfd(4 * kMiB, pattern);
  auto tracker = track(mem);
  LiveWriteOptions options;
  options.vcpus = 3;
  LiveVcpus vcpus(mem, options);
  const auto deadline = Clock::now() + std::chrono::seconds(20);
  // Waits until the vCPUs have written somewhere: a condition, with a deadline.
  while (!std::ranges::count(writtenPages(tracker, mem.pageCount()), true) &&
         Clock::now() < deadline) {
  }
  LiveWrites writes = vcpus.pause();
  ASSERT_GT(writes.writes, 0u);
  EXPECT_EQ(verifyMemory(mem, pattern, {.stamps = writes.stamps}).mismatches, 0u);
  // Everything written since the scan above: a subset of the stamps, all of which were seen
  // by this scan or the ones before it; after the pause nothing more is written.
  auto last = writtenPages(tracker, mem.pageCount());
  for (std::uint64_t p = 0; p < mem.pageCount(); ++p) {
    EXPECT_TRUE(!last[p] || writes.stamps.count(p)) << "page " << p << " written, not stamped";
  }
  EXPECT_EQ(std::ranges::count(writtenPages(tracker, mem.pageCount()), true), 0)
      << "a write after the pause";
}

// KVM writes guest memory through the VMM's page tables, so the tracking sees a vCPU's writes
// inside KVM_RUN as it sees the VMM's own.
TEST(LiveVcpus, KvmGuestWritesAreSeenByWriteTracking) {
  if (auto probe = probeKvmGuest(); !probe)
    GTEST_SKIP() << "KVM cannot run a guest here: " << probe.error().message();
  const Pattern pattern;
  GuestMemory mem = filledMemfd(4 * kMiB, pattern);
  auto tracker = track(mem);
  WorkloadOptions o;
  o.pattern = AccessPattern::kWrite;
  o.vcpus = 2;
  o.accesses = 400;
  auto guest = KvmGuest::create(mem, nullptr, o);
  ASSERT_TRUE(guest) << guest.error().message();
  auto work = (*guest)->run(nullptr, false);
  ASSERT_TRUE(work) << work.error().message();
  ASSERT_EQ(work->vcpu_kind, "kvm");
  ASSERT_GT(work->stamps.size(), 0u);
  auto written = writtenPages(tracker, mem.pageCount());
  std::uint64_t missed = 0;
  for (auto [page, gen] : work->stamps) missed += !written[page];
  EXPECT_EQ(missed, 0u) << "of " << work->stamps.size() << " pages the KVM guest wrote";
}

std::string readFile(const std::string& path) {
  std::ifstream in(path);
  std::stringstream text;
  text << in.rdbuf();
  return text.str();
}

// The agent's part, played by the test: copy everything, then in rounds the pages written since
// the previous scan, while the source VM runs; pause it; copy the last scan's pages. The copy
// must then equal the memory, and the memory the pattern with the source guest's stamps.
TEST(LiveSource, AnAgentCopyingInRoundsEndsWithTheMemoryAsPaused) {
  char dir_template[] = "/tmp/lazymig-live-source-XXXXXX";
  ASSERT_NE(::mkdtemp(dir_template), nullptr);
  const std::string dir = dir_template, socket_path = dir + "/handover.sock",
                    stamps = dir + "/stamps.json", log = dir + "/testvm.log";
  auto listener = sys::UnixSocket::listen(socket_path, 0600);
  ASSERT_TRUE(listener) << listener.error().message();
  auto vm = cli::ChildProcess::spawn(
      {std::string(LAZYMIG_BIN_DIR) + "/lazymig-testvm", "source", "--memory", "memfd", "--size",
       "8MiB", "--handover-socket", socket_path, "--live", "--live-vcpus", "2", "--stamps-file",
       stamps},
      log);
  ASSERT_TRUE(vm) << vm.error().message();
  auto conn = listener->accept();
  ASSERT_TRUE(conn) << conn.error().message();
  auto handshake =
      vmm::receiveHandshake(*conn, std::chrono::seconds(30), {}, -1, vmm::Receiver::kSource);
  ASSERT_TRUE(handshake) << handshake.error().message();
  ASSERT_TRUE(vmm::checkHandedFds(*handshake, vmm::Receiver::kSource));
  auto handover = vmm::sourceHandover(std::move(*handshake));
  ASSERT_TRUE(handover) << handover.error().message();
  ASSERT_TRUE(handover->live());
  const std::uint64_t pages = handover->total_bytes / kPageSize;
  auto memory = sys::Mapping::ofFd(handover->memory.get(), Bytes{handover->total_bytes},
                                   GuestOffset{0}, PROT_READ, MAP_SHARED);
  ASSERT_TRUE(memory);
  std::vector<sys::TrackedRange> ranges;
  for (const auto& r : handover->regions)
    ranges.push_back({HostAddr{r.base_host_virt_addr}, Bytes{r.size}});
  ASSERT_EQ(ranges.size(), 1u);
  auto uffd = sys::Uffd::adopt(std::move(handover->write_tracking_uffd));
  ASSERT_TRUE(uffd);
  auto tracker = sys::WriteTracker::adopt(std::move(*uffd), std::move(handover->pagemap),
                                          std::move(ranges), Bytes{kPageSize});
  ASSERT_TRUE(tracker) << tracker.error().message();

  std::vector<std::byte> copy(handover->total_bytes);
  auto copyPage = [&](std::uint64_t p) {
    // The guest writes words while the copy reads them: the same atomics the vCPUs use.
    auto* from = reinterpret_cast<std::uint64_t*>(memory->data() + p * kPageSize);
    auto* to = reinterpret_cast<std::uint64_t*>(copy.data() + p * kPageSize);
    for (std::size_t w = 0; w < kPageSize / 8; ++w)
      to[w] = std::atomic_ref<std::uint64_t>(from[w]).load(std::memory_order_relaxed);
  };
  auto scanAndCopy = [&] {
    std::vector<sys::PageRun> runs;
    auto ok = tracker->takeWritten(0, runs);
    EXPECT_TRUE(ok) << ok.error().message();
    std::uint64_t n = 0;
    for (const auto& run : runs) {
      for (std::uint64_t p = run.first; p < run.first + run.count; ++p) copyPage(p);
      n += run.count;
    }
    return n;
  };
  scanAndCopy();  // protects everything: round 1 copies all of it after this
  for (std::uint64_t p = 0; p < pages; ++p) copyPage(p);
  std::uint64_t caught_in_rounds = 0;
  for (int round = 2; round <= 6; ++round) caught_in_rounds += scanAndCopy();
  vm->signal(SIGUSR1);  // the orchestrator's pause
  const auto deadline = Clock::now() + std::chrono::seconds(30);
  while (readFile(log).find("\"paused\":true") == std::string::npos && Clock::now() < deadline) {
    std::this_thread::yield();
  }
  ASSERT_NE(readFile(log).find("\"paused\":true"), std::string::npos) << readFile(log);
  const std::uint64_t stale = scanAndCopy();  // the pages the destination must not keep
  EXPECT_GT(caught_in_rounds + stale, 0u) << "the guest wrote nothing while the rounds ran";
  EXPECT_EQ(std::memcmp(copy.data(), memory->data(), copy.size()), 0)
      << "the copy holds a page older than the paused memory";

  auto written = readStampsFile(stamps);
  ASSERT_TRUE(written) << written.error().message();
  ASSERT_FALSE(written->empty());
  auto mem = GuestMemory::create(MemoryKind::kAnonymous, handover->total_bytes, 1);
  ASSERT_TRUE(mem);
  std::memcpy(mem->page(0), copy.data(), copy.size());
  EXPECT_EQ(verifyMemory(*mem, Pattern{}, {.stamps = *written}).mismatches, 0u);

  vm->signal(SIGTERM);
  auto status = vm->wait(std::chrono::seconds(30));
  ASSERT_TRUE(status);
  EXPECT_TRUE(WIFEXITED(*status) && WEXITSTATUS(*status) == 0) << cli::describeStatus(*status);
  std::filesystem::remove_all(dir);
}

}  // namespace
}  // namespace lazymig::testvm
