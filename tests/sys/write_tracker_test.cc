// WriteTracker on real memory with a real async write-protect userfaultfd and PAGEMAP_SCAN:
// private anonymous memory and shared memory (a memfd, as a VMM hands it to the agent).
#include "sys/write_tracker.h"

#include <fcntl.h>
#include <gtest/gtest.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>

#include <atomic>
#include <random>
#include <thread>

#include "sys/mapping.h"
#include "sys/memory_fd.h"
#include "sys/unix_socket.h"

namespace lazymig::sys {
namespace {

constexpr std::uint64_t kPage = 4096;

enum class Memory { kAnonymous, kShared };

struct TestMemory {
  UniqueFd fd;  // kShared only
  Mapping mapping;

  static TestMemory create(Memory kind, std::uint64_t pages) {
    TestMemory m;
    if (kind == Memory::kAnonymous) {
      m.mapping = std::move(*Mapping::anonymous(Bytes{pages * kPage}));
    } else {
      m.fd = std::move(*createMemfd("write-tracker-test", Bytes{pages * kPage}));
      m.mapping = std::move(*Mapping::ofFd(m.fd.get(), Bytes{pages * kPage}, GuestOffset{0},
                                           PROT_READ | PROT_WRITE, MAP_SHARED));
    }
    // Populated, as a running guest's memory is: the scan must tell written from present.
    std::fill(m.mapping.bytes().begin(), m.mapping.bytes().end(), std::byte{1});
    return m;
  }
  std::atomic_ref<std::uint64_t> word(std::uint64_t page, std::uint64_t index = 0) const {
    return std::atomic_ref<std::uint64_t>(
        reinterpret_cast<std::uint64_t*>(mapping.data() + page * kPage)[index]);
  }
  TrackedRange range() const { return {mapping.address(), mapping.size()}; }
};

std::vector<PageRun> takeWritten(WriteTracker& tracker) {
  std::vector<PageRun> runs;
  auto ok = tracker.takeWritten(0, runs);
  EXPECT_TRUE(ok) << ok.error().message();
  return runs;
}

class WriteTrackerTest : public ::testing::TestWithParam<Memory> {};

INSTANTIATE_TEST_SUITE_P(Memory, WriteTrackerTest,
                         ::testing::Values(Memory::kAnonymous, Memory::kShared),
                         [](const auto& param_info) {
                           return param_info.param == Memory::kAnonymous ? "Anonymous" : "Shared";
                         });

TEST_P(WriteTrackerTest, ReportsExactlyTheRunsWritten) {
  auto mem = TestMemory::create(GetParam(), 64);
  auto tracker = WriteTracker::trackOwnMemory({mem.range()}, Bytes{kPage});
  ASSERT_TRUE(tracker) << tracker.error().message();
  EXPECT_EQ(takeWritten(*tracker), std::vector<PageRun>{}) << "nothing written since protecting";
  mem.word(5).store(7);
  mem.word(9).store(7);
  mem.word(10, 100).store(7);
  EXPECT_EQ(takeWritten(*tracker), (std::vector<PageRun>{{5, 1}, {9, 2}}));
}

TEST_P(WriteTrackerTest, RearmsWhatItReported) {
  auto mem = TestMemory::create(GetParam(), 64);
  auto tracker = WriteTracker::trackOwnMemory({mem.range()}, Bytes{kPage});
  ASSERT_TRUE(tracker) << tracker.error().message();
  mem.word(3).store(1);
  mem.word(40).store(1);
  EXPECT_EQ(takeWritten(*tracker), (std::vector<PageRun>{{3, 1}, {40, 1}}));
  EXPECT_EQ(takeWritten(*tracker), std::vector<PageRun>{}) << "pages not rewritten came back";
  (void)mem.word(3).load();  // a read is not a write
  mem.word(40).store(2);
  EXPECT_EQ(takeWritten(*tracker), (std::vector<PageRun>{{40, 1}}));
}

// The kernel stops when the output buffer is full and says where (walk_end); the pages past it
// were neither reported nor protected, and the next call must pick them up.
TEST_P(WriteTrackerTest, ContinuesWhereAFullBufferStoppedTheWalk) {
  auto mem = TestMemory::create(GetParam(), 64);
  auto tracker = WriteTracker::trackOwnMemory({mem.range()}, Bytes{kPage});
  ASSERT_TRUE(tracker) << tracker.error().message();
  tracker->setScanCapacity(1);
  for (std::uint64_t p : {1, 3, 4, 7, 62, 63}) mem.word(p).store(p);
  EXPECT_EQ(takeWritten(*tracker), (std::vector<PageRun>{{1, 1}, {3, 2}, {7, 1}, {62, 2}}));
  EXPECT_EQ(takeWritten(*tracker), std::vector<PageRun>{});
  mem.word(63).store(1);
  EXPECT_EQ(takeWritten(*tracker), (std::vector<PageRun>{{63, 1}}));
}

TEST_P(WriteTrackerTest, APageNeverTouchedIsReportedOnItsFirstWrite) {
  auto mem = TestMemory::create(GetParam(), 16);
  ASSERT_TRUE(mem.mapping.advise(MADV_DONTNEED, 8 * kPage, 8 * kPage));
  if (GetParam() == Memory::kShared) {
    ASSERT_EQ(
        ::fallocate(mem.fd.get(), FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE, 8 * kPage, 8 * kPage),
        0);
  }
  auto tracker = WriteTracker::trackOwnMemory({mem.range()}, Bytes{kPage});
  ASSERT_TRUE(tracker) << tracker.error().message();
  EXPECT_EQ(takeWritten(*tracker), std::vector<PageRun>{});
  mem.word(12).store(5);
  EXPECT_EQ(takeWritten(*tracker), (std::vector<PageRun>{{12, 1}}));
}

// The invariant pre-copy rests on: a page written after it was copied is copied again. A
// writer races scans; after each scan the reported pages are copied to a shadow, as a round
// sends them. Every write must be reported by the scan running when it landed or by the next
// one to start, and the shadow must end equal to the memory.
TEST_P(WriteTrackerTest, NoWriteIsLostWhileAWriterRacesTheScans) {
  constexpr std::uint64_t kPages = 512;
  auto mem = TestMemory::create(GetParam(), kPages);
  auto tracker = WriteTracker::trackOwnMemory({mem.range()}, Bytes{kPage});
  ASSERT_TRUE(tracker) << tracker.error().message();
  tracker->setScanCapacity(8);  // continuation in the middle of the race too
  std::vector<std::uint64_t> shadow(kPages);
  for (std::uint64_t p = 0; p < kPages; ++p) shadow[p] = mem.word(p).load();

  // The write landed after `scans_before` scans had started and before scan `scans_after` + 1
  // started: it must be reported by one of the scans between, the one running when it landed
  // or a later one.
  struct Write {
    std::uint64_t page;
    std::uint64_t scans_before;
    std::uint64_t scans_after;
  };
  constexpr std::uint64_t kWrites = 20000;
  constexpr std::size_t kScans = 500;
  std::atomic<std::uint64_t> scans_started{0};
  std::atomic<std::uint64_t> writes_done{0};
  std::atomic<bool> stop{false};
  std::vector<Write> writes;
  std::thread writer([&] {
    std::mt19937_64 rng(19);
    for (std::uint64_t value = 1; !stop.load(); ++value) {
      std::uint64_t page = rng() % kPages;
      // seq_cst loads around a seq_cst store: the write lands between the two counts.
      const std::uint64_t before = scans_started.load();
      mem.word(page).store(value);
      writes.push_back({page, before, scans_started.load()});
      writes_done.store(writes.size());
    }
  });
  std::vector<std::vector<bool>> reported;  // reported[s - 1][page]: scan s reported the page
  auto scanOnce = [&] {
    scans_started.fetch_add(1);
    std::vector<PageRun> runs;
    auto ok = tracker->takeWritten(0, runs);
    ASSERT_TRUE(ok) << ok.error().message();
    reported.emplace_back(kPages, false);
    for (const auto& run : runs) {
      for (std::uint64_t p = run.first; p < run.first + run.count; ++p) {
        reported.back()[p] = true;
        shadow[p] = mem.word(p).load();
      }
    }
  };
  // Scans back to back until the writer has written enough, with a deadline for a stuck one.
  auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(30);
  while ((writes_done.load() < kWrites || reported.size() < kScans) &&
         std::chrono::steady_clock::now() < deadline) {
    scanOnce();
  }
  stop = true;
  writer.join();
  scanOnce();  // the "pause": the last scan after the writer stopped

  ASSERT_GE(writes.size(), kWrites) << "the writer did not get to write within the deadline";
  ASSERT_GE(reported.size(), kScans) << "too few scans raced the writer";
  std::uint64_t lost = 0;
  for (const auto& w : writes) {
    // Scan s (1-based) is reported[s - 1]; scan 0 does not exist.
    bool seen = false;
    for (auto s = std::max<std::uint64_t>(w.scans_before, 1); s <= w.scans_after + 1; ++s) {
      seen = seen || reported[s - 1][w.page];
    }
    lost += !seen;
  }
  EXPECT_EQ(lost, 0u) << "of " << writes.size() << " writes over " << reported.size() << " scans";
  std::uint64_t stale = 0;
  for (std::uint64_t p = 0; p < kPages; ++p) stale += shadow[p] != mem.word(p).load();
  EXPECT_EQ(stale, 0u) << "pages whose copy is older than the memory";
}

TEST(WriteTracker, RefusesARangeNoUffdCoversAndNamesIt) {
  auto tracked = TestMemory::create(Memory::kAnonymous, 8);
  auto other = TestMemory::create(Memory::kAnonymous, 8);
  auto tracker = WriteTracker::trackOwnMemory({tracked.range()}, Bytes{kPage});
  ASSERT_TRUE(tracker) << tracker.error().message();
  auto uffd = tracker->uffd().fd().duplicate();
  auto pagemap = tracker->pagemap().duplicate();
  ASSERT_TRUE(uffd && pagemap);
  auto adopted = WriteTracker::adopt(*Uffd::adopt(std::move(*uffd)), std::move(*pagemap),
                                     {tracked.range(), other.range()}, Bytes{kPage});
  ASSERT_FALSE(adopted);
  EXPECT_NE(adopted.error().message().find("range 1"), std::string::npos)
      << adopted.error().message();
  EXPECT_NE(adopted.error().message().find("not registered"), std::string::npos);
}

TEST(WriteTracker, AdoptRefusesAUffdWithoutAsyncWriteProtect) {
  auto mem = TestMemory::create(Memory::kAnonymous, 8);
  auto uffd = Uffd::open(0);
  ASSERT_TRUE(uffd);
  auto pagemap = openFile("/proc/self/pagemap", O_RDONLY);
  ASSERT_TRUE(pagemap);
  auto adopted =
      WriteTracker::adopt(std::move(*uffd), std::move(*pagemap), {mem.range()}, Bytes{kPage});
  ASSERT_FALSE(adopted);
  EXPECT_NE(adopted.error().message().find("UFFD_FEATURE_WP_ASYNC"), std::string::npos)
      << adopted.error().message();
}

TEST(WriteTracker, AdoptRefusesAnFdThatIsNotAPagemap) {
  auto mem = TestMemory::create(Memory::kAnonymous, 8);
  auto uffd = Uffd::open(WriteTracker::uffdFeatures());
  ASSERT_TRUE(uffd) << uffd.error().message();
  auto not_pagemap = openFile("/dev/null", O_RDONLY);
  ASSERT_TRUE(not_pagemap);
  auto adopted =
      WriteTracker::adopt(std::move(*uffd), std::move(*not_pagemap), {mem.range()}, Bytes{kPage});
  ASSERT_FALSE(adopted);
  EXPECT_NE(adopted.error().message().find("is not a /proc/PID/pagemap (it is /dev/null)"),
            std::string::npos)
      << adopted.error().message();
}

// Another process's view: the agent holds the VMM's uffd and pagemap, not its memory.
TEST(WriteTracker, AdoptedTrackerSeesWritesMadeAfterTheOwnerProtected) {
  auto mem = TestMemory::create(Memory::kShared, 32);
  auto owner = WriteTracker::trackOwnMemory({mem.range()}, Bytes{kPage});
  ASSERT_TRUE(owner) << owner.error().message();
  mem.word(2).store(1);  // written before the adopter's first scan: reported by it
  auto adopted =
      WriteTracker::adopt(*Uffd::adopt(std::move(*owner->uffd().fd().duplicate())),
                          std::move(*owner->pagemap().duplicate()), {mem.range()}, Bytes{kPage});
  ASSERT_TRUE(adopted) << adopted.error().message();
  EXPECT_EQ(takeWritten(*adopted), (std::vector<PageRun>{{2, 1}}));
  mem.word(30).store(1);
  EXPECT_EQ(takeWritten(*adopted), (std::vector<PageRun>{{30, 1}}));
}

// hugetlbfs: the kernel tracks whole huge pages (PAGEMAP_SCAN walks hugetlb since Linux 6.7);
// runs are counted in huge pages when the tracker's page size says so.
TEST(WriteTracker, TracksHugetlbMemoryInHugePages) {
  constexpr std::uint64_t kHuge = 2 * kMiB;
  auto mem = Mapping::anonymousHugetlb(Bytes{4 * kHuge}, Bytes{kHuge});
  if (!mem) GTEST_SKIP() << "no free 2 MiB huge pages: " << mem.error().message();
  std::fill(mem->bytes().begin(), mem->bytes().end(), std::byte{1});
  auto tracker = WriteTracker::trackOwnMemory({{mem->address(), mem->size()}}, Bytes{kHuge});
  ASSERT_TRUE(tracker) << tracker.error().message();
  EXPECT_EQ(takeWritten(*tracker), std::vector<PageRun>{});
  std::atomic_ref<std::uint64_t>(*reinterpret_cast<std::uint64_t*>(mem->data() + 2 * kHuge + kPage))
      .store(3);
  EXPECT_EQ(takeWritten(*tracker), (std::vector<PageRun>{{2, 1}}));
  EXPECT_EQ(takeWritten(*tracker), std::vector<PageRun>{});
}

// The agent's view: another process (standing in for the VMM) protects its own memory and hands
// over its uffd and its pagemap; the agent scans them without access to that process beyond the
// two fds. Once the process is gone the scan says so.
TEST(WriteTracker, ScansAnotherProcessThroughTheFdsItHandedOver) {
  int pair[2];
  ASSERT_EQ(::socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, pair), 0);
  UnixSocket agent_end{UniqueFd(pair[0])};
  UnixSocket vmm_end{UniqueFd(pair[1])};
  constexpr std::uint64_t kPages = 32;
  pid_t child = ::fork();
  ASSERT_GE(child, 0);
  if (child == 0) {
    // The "VMM": never returns into the test.
    auto mem = TestMemory::create(Memory::kAnonymous, kPages);
    auto tracker = WriteTracker::trackOwnMemory({mem.range()}, Bytes{kPage});
    if (!tracker) ::_exit(10);
    const std::string where = std::to_string(mem.mapping.address().value);
    int fds[] = {tracker->uffd().pollFd(), tracker->pagemap().get()};
    if (!vmm_end.sendWithFds(where, fds)) ::_exit(11);
    for (;;) {  // one byte per command: a page number to write, or 0xff to exit
      auto cmd = vmm_end.receiveSome(1);
      if (!cmd || cmd->empty() || static_cast<unsigned char>((*cmd)[0]) == 0xff) ::_exit(0);
      mem.word(static_cast<unsigned char>((*cmd)[0])).store(1);
      if (!vmm_end.sendAll("k")) ::_exit(12);
    }
  }
  auto msg = agent_end.receiveWithFds(64, 2);
  ASSERT_TRUE(msg) << msg.error().message();
  ASSERT_EQ(msg->fds.size(), 2u);
  const HostAddr base{std::stoull(msg->data)};
  auto uffd = Uffd::adopt(std::move(msg->fds[0]));
  ASSERT_TRUE(uffd) << uffd.error().message();
  auto tracker = WriteTracker::adopt(std::move(*uffd), std::move(msg->fds[1]),
                                     {{base, Bytes{kPages * kPage}}}, Bytes{kPage});
  ASSERT_TRUE(tracker) << tracker.error().message();
  EXPECT_EQ(takeWritten(*tracker), std::vector<PageRun>{});
  for (char page : {char(4), char(5), char(20)}) {
    ASSERT_TRUE(agent_end.sendAll(std::string(1, page)));
    auto ack = agent_end.receiveSome(1);
    ASSERT_TRUE(ack && *ack == "k");
  }
  EXPECT_EQ(takeWritten(*tracker), (std::vector<PageRun>{{4, 2}, {20, 1}}));
  ASSERT_TRUE(agent_end.sendAll(std::string(1, char(0xff))));
  int status = 0;
  ASSERT_EQ(::waitpid(child, &status, 0), child);
  ASSERT_TRUE(WIFEXITED(status) && WEXITSTATUS(status) == 0) << status;
  std::vector<PageRun> runs;
  auto gone = tracker->takeWritten(0, runs);
  ASSERT_FALSE(gone) << "a scan of an exited process's memory succeeded";
  EXPECT_EQ(gone.error().code, Errc::kPeerGone) << gone.error().message();
}

}  // namespace
}  // namespace lazymig::sys
