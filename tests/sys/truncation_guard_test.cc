// A VMM may truncate the memfd it handed over; the agent's next access to a page past the new
// end gets SIGBUS. Guarded copies and scans turn that into an error on real truncated memfds,
// again and again and on several threads at once, and leave every other SIGBUS fatal.
#include "sys/truncation_guard.h"

#include <gtest/gtest.h>
#include <sys/mman.h>
#include <unistd.h>

#include <atomic>
#include <cstring>
#include <thread>
#include <vector>

#include "sys/mapping.h"
#include "sys/memory_fd.h"

namespace lazymig::sys {
namespace {

constexpr std::size_t kPage = 4096;

struct ShrunkMemory {
  UniqueFd fd;
  Mapping map;
};

// Four pages mapped shared, the first one non-zero, then the file cut to one page.
ShrunkMemory shrunkToOnePage() {
  auto fd = createMemfd("shrunk", Bytes{4 * kPage});
  EXPECT_TRUE(fd) << fd.error().message();
  auto map = Mapping::ofFd(fd->get(), Bytes{4 * kPage}, GuestOffset{0}, PROT_READ | PROT_WRITE,
                           MAP_SHARED);
  EXPECT_TRUE(map) << map.error().message();
  std::memset(map->data(), 0x5a, kPage);
  EXPECT_EQ(::ftruncate(fd->get(), kPage), 0);
  return {std::move(*fd), std::move(*map)};
}

TEST(TruncationGuard, ACopyFromPagesPastTheEndIsAnErrorNotACrash) {
  auto m = shrunkToOnePage();
  std::vector<std::byte> out(kPage);
  EXPECT_TRUE(guardedCopy(out.data(), m.map.data(), kPage, "page 0"));
  EXPECT_EQ(out[17], std::byte{0x5a});
  auto gone = guardedCopy(out.data(), m.map.data() + 2 * kPage, kPage, "page 2 of the test memfd");
  ASSERT_FALSE(gone);
  EXPECT_EQ(gone.error().code, Errc::kClosed);
  EXPECT_NE(gone.error().message().find("page 2 of the test memfd"), std::string::npos);
  EXPECT_NE(gone.error().message().find("truncated"), std::string::npos);
  // A copy that starts before the end and runs past it fails as a whole.
  EXPECT_FALSE(guardedCopy(out.data(), m.map.data() + kPage / 2, kPage, "straddling"));
}

TEST(TruncationGuard, AWriteIntoPagesPastTheEndIsAnError) {
  auto m = shrunkToOnePage();
  std::vector<std::byte> in(kPage, std::byte{1});
  EXPECT_FALSE(guardedCopy(m.map.data() + 3 * kPage, in.data(), kPage, "page 3"));
  EXPECT_TRUE(guardedCopy(m.map.data(), in.data(), kPage, "page 0"));
  EXPECT_FALSE(guardedZero(m.map.data() + 2 * kPage, kPage, "page 2"));
  EXPECT_TRUE(guardedZero(m.map.data(), kPage, "page 0"));
  EXPECT_EQ(m.map.data()[5], std::byte{0});
}

TEST(TruncationGuard, ZeroScansSayZeroNonZeroOrGone) {
  auto m = shrunkToOnePage();
  auto first = guardedIsZero(m.map.data(), kPage, "page 0");
  ASSERT_TRUE(first);
  EXPECT_FALSE(*first);
  std::memset(m.map.data(), 0, kPage);
  m.map.data()[kPage - 1] = std::byte{1};  // only the last byte
  EXPECT_FALSE(*guardedIsZero(m.map.data(), kPage, "page 0"));
  m.map.data()[kPage - 1] = std::byte{0};
  EXPECT_TRUE(*guardedIsZero(m.map.data(), kPage, "page 0"));
  EXPECT_TRUE(*guardedIsZero(m.map.data() + 1, 7, "an odd length"));
  EXPECT_FALSE(guardedIsZero(m.map.data() + kPage, kPage, "page 1"));
}

TEST(TruncationGuard, EveryThreadGetsItsOwnErrorEveryTime) {
  auto m = shrunkToOnePage();
  std::vector<std::thread> threads;
  std::atomic<int> errors{0}, copies{0};
  for (int t = 0; t < 4; ++t) {
    threads.emplace_back([&] {
      std::vector<std::byte> out(kPage);
      for (int i = 0; i < 500; ++i) {
        if (!guardedCopy(out.data(), m.map.data() + (1 + i % 3) * kPage, kPage, "gone")) ++errors;
        if (guardedCopy(out.data(), m.map.data(), kPage, "there")) ++copies;
      }
    });
  }
  for (auto& t : threads) t.join();
  EXPECT_EQ(errors.load(), 2000);
  EXPECT_EQ(copies.load(), 2000);
}

TEST(TruncationGuardDeathTest, ASigbusOutsideAGuardStillEndsTheProcess) {
  GTEST_FLAG_SET(death_test_style, "threadsafe");
  auto m = shrunkToOnePage();
  std::vector<std::byte> out(kPage);
  EXPECT_FALSE(guardedCopy(out.data(), m.map.data() + kPage, kPage, "installs the handler"));
  EXPECT_EXIT(
      {
        volatile std::byte b = m.map.data()[2 * kPage];
        (void)b;
      },
      ::testing::KilledBySignal(SIGBUS), "");
}

}  // namespace
}  // namespace lazymig::sys
