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

#include "agent/core/loop_sync.h"
#include "agent/destination/fault_service.h"
#include "agent/destination/population/guest_layout.h"
#include "agent/destination/population/page_installer.h"
#include "store/page_map.h"
#include "sys/mapping.h"
#include "sys/memory_fd.h"
#include "sys/uffd.h"
#include "test_support.h"
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
  sys::UniqueFd bitmap_fd;
  sys::Mapping mapping;
  sys::Mapping bitmap;  // the VMM's (and KVM's) view of the userfault bitmap
};

// How guest memory is backed and registered, and so how the agent populates it.
enum class Mode {
  kAnonymous,     // uffd_copy
  kShmemMissing,  // uffd_copy on a memfd
  kShmemMinor,    // memfd registered MISSING | MINOR: write + UFFDIO_CONTINUE
  // guest_memfd shape on a memfd stand-in (Linux 6.18 refuses uffd registration on a real
  // guest_memfd, and this race needs both routes): a userfault bitmap, faults by FaultRequest
  // from vCPUs that check their bit and by uffd from those that do not. The real guest_memfd
  // races guest writes in tests/e2e/memory_kinds_test.cc.
  kGuestMemfdShape,
};

// How the agent writes pages on the write paths: pwrite (memfd) or through its mapping (the
// only way into a mainline guest_memfd).
enum class Write { kPwrite, kMmap };

Guest makeGuest(Mode mode, std::uint64_t bytes) {
  Guest g;
  if (mode == Mode::kAnonymous) {
    g.mapping = *sys::Mapping::anonymous(Bytes{bytes});
    return g;
  }
  g.memfd = *sys::createMemfd("guest", Bytes{bytes});
  g.mapping = *sys::Mapping::ofFd(g.memfd.get(), Bytes{bytes}, GuestOffset{0},
                                  PROT_READ | PROT_WRITE, MAP_SHARED);
  if (mode == Mode::kGuestMemfdShape) {
    std::uint64_t words = (bytes / kPage + 63) / 64;
    g.bitmap_fd = *sys::createMemfd("bitmap", Bytes{words * 8});
    g.bitmap = *sys::Mapping::ofFd(g.bitmap_fd.get(), Bytes{words * 8}, GuestOffset{0},
                                   PROT_READ | PROT_WRITE, MAP_SHARED);
    std::memset(g.bitmap.data(), 0xff, words * 8);
  }
  return g;
}

PopulationPath pathOf(Mode mode) {
  switch (mode) {
    case Mode::kShmemMinor:
      return PopulationPath::kShmemMinorContinue;
    case Mode::kGuestMemfdShape:
      return PopulationPath::kGuestMemfd;
    default:
      return PopulationPath::kUffdCopy;
  }
}

bool bitSet(const Guest& g, std::uint64_t page) {
  auto word = std::atomic_ref<std::uint64_t>(
      *reinterpret_cast<std::uint64_t*>(g.bitmap.data() + page / 64 * 8));
  return (word.load(std::memory_order_acquire) >> (page % 64)) & 1;
}

void hammer(Mode mode, Write write = Write::kPwrite) {
  const std::uint64_t pages = 8192;  // 32 MiB
  const auto src = makeSource(pages);
  Guest guest = makeGuest(mode, pages * kPage);
  const bool minor = mode == Mode::kShmemMinor || mode == Mode::kGuestMemfdShape;
  std::uint64_t features = UFFD_FEATURE_EVENT_REMOVE |
                           (mode != Mode::kAnonymous ? UFFD_FEATURE_MISSING_SHMEM : 0) |
                           (minor ? UFFD_FEATURE_MINOR_SHMEM : 0);
  auto uffd = sys::Uffd::open(features);
  ASSERT_TRUE(uffd) << uffd.error().message();
  ASSERT_TRUE(uffd->registerRange(
      guest.mapping.address(), guest.mapping.size(),
      minor ? sys::RegisterMode::kMissingAndMinor : sys::RegisterMode::kMissing));
  auto layout = GuestLayout::fromMappings({{.base_host_virt_addr = guest.mapping.address().value,
                                            .size = pages * kPage,
                                            .offset = 0,
                                            .page_size = kPage,
                                            .gpa_start = std::uint64_t{1} << 32}});
  ASSERT_TRUE(layout);
  store::PageMap map(pages);
  GuestMemoryView view;
  if (minor) {
    auto v = GuestMemoryView::map(guest.memfd, pages * kPage, kPage,
                                  mode == Mode::kGuestMemfdShape ? &guest.bitmap_fd : nullptr,
                                  write == Write::kPwrite);
    ASSERT_TRUE(v) << v.error().message();
    view = std::move(*v);
    ASSERT_EQ(view.method(), write == Write::kPwrite ? WriteMethod::kPwrite : WriteMethod::kMmap);
  }
  PageInstaller installer(*uffd, *layout, map, pathOf(mode), minor ? &view : nullptr);
  std::atomic<std::uint64_t> replies{0};
  MigrationStats stats;
  auto loop = transport::EventLoop::start("urgent-test");
  ASSERT_TRUE(loop) << loop.error().message();

  // The source: a real TLS peer on loopback answering each request, as the network would.
  test_support::TestPki pki;
  test_support::SourceStandIn source(pki,
                                     {.migration_id = "race", .page_size = kPage, .memory = src});
  const DestinationContext ctx =
      test_support::contextFor(*layout, map, installer, *uffd, stats, **loop, pki.clientContext(),
                               source.linkParams(transport::ChannelKind::kUrgent));
  std::unique_ptr<FaultService> faults;
  std::atomic<bool> fatal{false};
  runOnLoop(**loop, [&] {
    faults = std::make_unique<FaultService>(
        ctx, FaultService::Hooks{
                 .fatal =
                     [&](const Error& e) {
                       ADD_FAILURE() << e.message();
                       fatal = true;
                     },
                 .progressed = [] {},
                 .reply =
                     [&](const vmm::FaultReply& r) {
                       EXPECT_EQ(r.len, kPage);
                       EXPECT_FALSE(guest.bitmap.valid() && bitSet(guest, r.offset / kPage))
                           << "replied before the page's bit was cleared";
                       replies.fetch_add(1);
                     }});
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
  std::atomic<std::uint64_t> requests{0};
  for (int v = 0; v < kVcpus; ++v) {
    vcpus.emplace_back([&, v] {
      std::mt19937_64 rng(100 + v);
      for (int i = 0; i < 3000; ++i) {
        std::uint64_t p = rng() % pages;
        if (mode == Mode::kGuestMemfdShape && v % 2 == 0 && bitSet(guest, p)) {
          // As KVM would: a set bit makes the vCPU exit and the VMM ask for the page.
          vmm::FaultRequest req{.vcpu = static_cast<std::uint32_t>(v),
                                .offset = 0,
                                .flags = 0,
                                .gpa = (std::uint64_t{1} << 32) + p * kPage};
          requests.fetch_add(1);
          (*loop)->post([&, req] { ASSERT_TRUE(faults->onFaultRequest(req)); });
          while (bitSet(guest, p)) std::this_thread::yield();
        }
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
  if (mode == Mode::kGuestMemfdShape) {
    // Every request answered, and no bit left set.
    // Replies for pages the bulk stream populated come with the source's late answer.
    for (int i = 0; i < 5000 && replies.load() < requests.load(); ++i) {
      std::this_thread::sleep_for(std::chrono::milliseconds(1));
    }
    EXPECT_GT(requests.load(), 0u);
    EXPECT_EQ(replies.load(), requests.load());
    EXPECT_EQ(view.bitsSet().value_or(1), 0u);
  }
  runOnLoop(**loop, [&] { faults->stop(); });
  EXPECT_FALSE(fatal.load());
  EXPECT_EQ(mismatches.load(), 0u);
  ASSERT_TRUE(map.complete());
  // As the agent does once every page is in: guest_memfd pages populated without a uffd
  // fault are in the page cache but not yet in the guest's page table.
  ASSERT_TRUE(uffd->unregisterRange(guest.mapping.address(), guest.mapping.size()));

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

TEST(FaultRace, AnonymousMemory) { hammer(Mode::kAnonymous); }
TEST(FaultRace, SharedMemoryMissingMode) { hammer(Mode::kShmemMissing); }
TEST(FaultRace, SharedMemoryMinorModeByPwrite) { hammer(Mode::kShmemMinor, Write::kPwrite); }
TEST(FaultRace, SharedMemoryMinorModeThroughTheMapping) { hammer(Mode::kShmemMinor, Write::kMmap); }
TEST(FaultRace, GuestMemfdShapeBothRoutesByPwrite) {
  hammer(Mode::kGuestMemfdShape, Write::kPwrite);
}
TEST(FaultRace, GuestMemfdShapeBothRoutesThroughTheMapping) {
  hammer(Mode::kGuestMemfdShape, Write::kMmap);
}

// A guest that discards pages (balloon) while they are still on the way must read zeros
// there afterwards, never the old contents.
TEST(FaultRace, RemovedPagesReadAsZerosNotOldContents) {
  const std::uint64_t pages = 256;
  const auto src = makeSource(pages);
  Guest guest = makeGuest(Mode::kAnonymous, pages * kPage);
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
  test_support::TestPki pki;
  test_support::SourceStandIn source(
      pki, {.migration_id = "removed", .page_size = kPage, .memory = src});
  const DestinationContext ctx =
      test_support::contextFor(*layout, map, installer, *uffd, stats, **loop, pki.clientContext(),
                               source.linkParams(transport::ChannelKind::kUrgent));
  std::unique_ptr<FaultService> faults;
  runOnLoop(**loop, [&] {
    faults = std::make_unique<FaultService>(
        ctx, FaultService::Hooks{.fatal = [](const Error& e) { ADD_FAILURE() << e.message(); },
                                 .progressed = [] {}});
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
