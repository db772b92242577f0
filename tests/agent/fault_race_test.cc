// The fault/bulk race on real userfaultfd: vCPU threads fault on pages while a bulk thread
// installs the same pages in random order. No vCPU may hang, no byte may differ, no page may
// be installed twice, and pages the guest wrote must keep what it wrote (invariants 1-3).
#include <linux/userfaultfd.h>

#include <gtest/gtest.h>

#include <algorithm>
#include <atomic>
#include <cstring>
#include <random>
#include <thread>

#include "agent/fault_service.h"
#include "agent/guest_layout.h"
#include "agent/loop_sync.h"
#include "agent/page_installer.h"
#include "store/page_map.h"
#include "sys/mapping.h"
#include "sys/memory_fd.h"
#include "sys/uffd.h"
#include "transport/connection.h"

namespace lazymig::agent {
namespace {

// Guest vCPUs race on guest memory by design (a guest does); relaxed atomics say so to
// TSan without changing what the kernel sees.
std::atomic_ref<std::uint64_t> guestWord(std::byte* at) {
  return std::atomic_ref<std::uint64_t>(*reinterpret_cast<std::uint64_t*>(at));
}

constexpr std::uint64_t kPage = 4096;

std::vector<std::byte> makeSource(std::uint64_t pages) {
  std::vector<std::byte> src(pages * kPage);
  std::mt19937_64 rng(7);
  for (std::uint64_t p = 0; p < pages; ++p) {
    if (p % 5 == 0) continue;  // a zero page every fifth
    auto* w = reinterpret_cast<std::uint64_t*>(src.data() + p * kPage);
    for (std::uint64_t i = 0; i < kPage / 8; ++i) w[i] = rng() | 1;
  }
  return src;
}

bool isZero(const std::byte* p) {
  return std::all_of(p, p + kPage, [](std::byte b) { return b == std::byte{0}; });
}

struct Guest {
  sys::UniqueFd memfd;
  sys::Mapping mapping;
};

Guest makeGuest(bool shared, std::uint64_t bytes) {
  Guest g;
  if (shared) {
    g.memfd = *sys::createMemfd("guest", Bytes{bytes});
    g.mapping = *sys::Mapping::ofFd(g.memfd.get(), Bytes{bytes}, GuestOffset{0},
                                    PROT_READ | PROT_WRITE, MAP_SHARED);
  } else {
    g.mapping = *sys::Mapping::anonymous(Bytes{bytes});
  }
  return g;
}

void hammer(bool shared) {
  const std::uint64_t pages = 8192;  // 32 MiB
  const auto src = makeSource(pages);
  Guest guest = makeGuest(shared, pages * kPage);
  std::uint64_t features = UFFD_FEATURE_EVENT_REMOVE | (shared ? UFFD_FEATURE_MISSING_SHMEM : 0);
  auto uffd = sys::Uffd::open(features);
  ASSERT_TRUE(uffd) << uffd.error().message();
  ASSERT_TRUE(uffd->registerRange(guest.mapping.address(), guest.mapping.size(),
                                  sys::RegisterMode::kMissing));
  auto layout = GuestLayout::fromMappings({{.base_host_virt_addr = guest.mapping.address().value,
                                            .size = pages * kPage,
                                            .offset = 0,
                                            .page_size = kPage}});
  ASSERT_TRUE(layout);
  store::PageMap map(pages);
  PageInstaller installer(*uffd, *layout, map);
  MigrationStats stats;
  auto loop = transport::EventLoop::start("urgent-test");
  ASSERT_TRUE(loop) << loop.error().message();

  std::unique_ptr<FaultService> faults;
  std::atomic<bool> fatal{false};
  runOnLoop(**loop, [&] {
    faults = std::make_unique<FaultService>(
        **loop, *uffd, *layout, map, installer, stats, nullptr, log::root(),
        FaultService::Hooks{
            [&](std::span<const std::uint64_t> req) {
              // The "source": answer each page on a later turn of the loop, as a reply
              // from the network would arrive.
              std::vector<std::uint64_t> copy(req.begin(), req.end());
              (*loop)->post([&, copy] {
                for (auto p : copy) {
                  if (isZero(src.data() + p * kPage)) {
                    faults->onZeroRange({p, 1});
                  } else {
                    faults->onPageData({p, 1, std::span(src.data() + p * kPage, kPage)});
                  }
                }
              });
              return true;
            },
            [&](const Error& e) {
              ADD_FAILURE() << e.message();
              fatal = true;
            },
            [] {}});
    ASSERT_TRUE(faults->start());
  });

  std::atomic<std::uint64_t> bulk_installed{0};
  std::thread bulk([&] {
    std::vector<std::uint64_t> runs;
    for (std::uint64_t r = 0; r < pages / 64; ++r) runs.push_back(r * 64);
    std::shuffle(runs.begin(), runs.end(), std::mt19937_64(11));
    for (auto first : runs) {
      bool zero_run = true;
      for (std::uint64_t p = first; p < first + 64; ++p) zero_run &= isZero(src.data() + p * kPage);
      auto r = installer.install(
          PageIndex{first}, 64, zero_run ? nullptr : src.data() + first * kPage,
          [] { std::this_thread::yield(); }, /*fault_thread=*/false);
      ASSERT_TRUE(r) << r.error().message();
      bulk_installed += r->installed;
    }
  });

  constexpr int kVcpus = 8;
  std::vector<std::vector<std::pair<std::uint64_t, std::uint64_t>>> written(kVcpus);
  std::atomic<std::uint64_t> mismatches{0};
  std::vector<std::thread> vcpus;
  auto* mem = guest.mapping.data();
  for (int v = 0; v < kVcpus; ++v) {
    vcpus.emplace_back([&, v] {
      std::mt19937_64 rng(100 + v);
      for (int i = 0; i < 3000; ++i) {
        std::uint64_t p = rng() % pages;
        if (p % kVcpus == static_cast<std::uint64_t>(v) && i % 3 == 0) {
          // A guest write: it must survive every later install attempt.
          std::uint64_t stamp = (std::uint64_t(v) << 48) | std::uint64_t(i);
          guestWord(mem + p * kPage + 8 * (p % 500)).store(stamp, std::memory_order_relaxed);
          written[v].emplace_back(p, stamp);
          continue;
        }
        std::uint64_t off = 8 * (rng() % (kPage / 8));
        std::uint64_t got = guestWord(mem + p * kPage + off).load(std::memory_order_relaxed);
        bool mine = p % kVcpus == static_cast<std::uint64_t>(v);
        std::uint64_t want;
        std::memcpy(&want, src.data() + p * kPage + off, 8);
        if (!mine && off != 8 * (p % 500) && got != want) ++mismatches;
      }
    });
  }
  for (auto& t : vcpus) t.join();
  bulk.join();
  runOnLoop(**loop, [&] { faults->stop(); });
  EXPECT_FALSE(fatal.load());
  EXPECT_EQ(mismatches.load(), 0u);
  ASSERT_TRUE(map.complete());

  // Every page installed exactly once across both paths (EEXIST answers are not installs).
  std::uint64_t demand = stats.demand_pages + stats.zero_pages;
  EXPECT_EQ(bulk_installed.load() + demand, pages);
  EXPECT_GT(stats.demand_faults.load(), 0u);

  // Final content: the source, with the guest's last stamp in each page it wrote.
  std::vector<std::byte> expect = src;
  for (auto& w : written) {
    for (auto [p, stamp] : w) std::memcpy(expect.data() + p * kPage + 8 * (p % 500), &stamp, 8);
  }
  std::uint64_t bad = 0;
  for (std::uint64_t p = 0; p < pages; ++p) {
    bad += std::memcmp(mem + p * kPage, expect.data() + p * kPage, kPage) != 0;
  }
  EXPECT_EQ(bad, 0u);
  faults.reset();
}

TEST(FaultRace, AnonymousMemory) { hammer(false); }
TEST(FaultRace, SharedMemoryMissingMode) { hammer(true); }

// A guest that discards pages (balloon) while they are still on the way must read zeros
// there afterwards, never the old contents.
TEST(FaultRace, RemovedPagesReadAsZerosNotOldContents) {
  const std::uint64_t pages = 256;
  const auto src = makeSource(pages);
  Guest guest = makeGuest(false, pages * kPage);
  auto uffd = sys::Uffd::open(UFFD_FEATURE_EVENT_REMOVE);
  ASSERT_TRUE(uffd);
  ASSERT_TRUE(uffd->registerRange(guest.mapping.address(), guest.mapping.size(),
                                  sys::RegisterMode::kMissing));
  auto layout = GuestLayout::fromMappings({{.base_host_virt_addr = guest.mapping.address().value,
                                            .size = pages * kPage,
                                            .offset = 0,
                                            .page_size = kPage}});
  store::PageMap map(pages);
  PageInstaller installer(*uffd, *layout, map);
  MigrationStats stats;
  auto loop = transport::EventLoop::start("urgent-test");
  ASSERT_TRUE(loop);
  std::unique_ptr<FaultService> faults;
  runOnLoop(**loop, [&] {
    faults = std::make_unique<FaultService>(
        **loop, *uffd, *layout, map, installer, stats, nullptr, log::root(),
        FaultService::Hooks{
            [&](std::span<const std::uint64_t> req) {
              std::vector<std::uint64_t> copy(req.begin(), req.end());
              (*loop)->post([&, copy] {
                for (auto p : copy) {
                  faults->onPageData({p, 1, std::span(src.data() + p * kPage, kPage)});
                }
              });
              return true;
            },
            [](const Error& e) { ADD_FAILURE() << e.message(); }, [] {}});
    ASSERT_TRUE(faults->start());
  });
  // Touch page 1 so it is installed, then discard pages 0..15 as a balloon would.
  volatile std::byte b = guest.mapping.data()[1 * kPage];
  (void)b;
  ASSERT_TRUE(guest.mapping.advise(MADV_DONTNEED, 0, 16 * kPage));
  // The bulk stream now delivers those pages: they must be skipped.
  auto r = installer.install(
      PageIndex{0}, 16, src.data(), [] { std::this_thread::yield(); },
      /*fault_thread=*/false);
  ASSERT_TRUE(r);
  EXPECT_EQ(r->installed, 0u);
  for (std::uint64_t p = 0; p < 16; ++p) {
    EXPECT_TRUE(isZero(guest.mapping.data() + p * kPage)) << "page " << p;
  }
  EXPECT_EQ(std::memcmp(guest.mapping.data() + 20 * kPage, src.data() + 20 * kPage, kPage), 0);
  runOnLoop(**loop, [&] { faults->stop(); });
}

}  // namespace
}  // namespace lazymig::agent
