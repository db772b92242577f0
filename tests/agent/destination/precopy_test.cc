// Pre-copy at the destination (issue 19), on real userfaultfd and over real TLS against the
// source stand-in, whose bulk channel the test drives: round pages, StalePages, post-copy
// pages; on both install paths (UFFDIO_COPY into anonymous memory, and minor mode: written
// into a memfd, then UFFDIO_CONTINUE). Every round writes different bytes into a page, so an
// old copy is detectable. The invariant: a page is never installed from a pre-copied copy the
// source named stale, and nothing staged is installed before the StalePages frame with `last`.
#include <linux/userfaultfd.h>

#include <gtest/gtest.h>
#include <unistd.h>

#include <cstring>
#include <set>
#include <thread>

#include "agent/core/loop_sync.h"
#include "agent/destination/bulk_receiver.h"
#include "agent/destination/fault_service.h"
#include "sys/mapping.h"
#include "sys/memory_fd.h"
#include "sys/process.h"
#include "test_support.h"

namespace lazymig::agent {
namespace {

using namespace std::chrono_literals;
using test_support::waitUntil;
constexpr std::uint64_t kPage = 4096;
constexpr std::uint64_t kPages = 64;
using Image = std::shared_ptr<const std::vector<std::byte>>;

// The source's memory at round `version`: every page its own bytes per version, page 9 zero
// until version 2, page 10 zero from version 3 on.
std::vector<std::byte> memoryAt(int version, const std::set<std::uint64_t>& changed,
                                std::vector<std::byte> before = {}) {
  if (before.empty()) before.resize(kPages * kPage);
  for (std::uint64_t p = 0; p < kPages; ++p) {
    if (version > 1 && !changed.contains(p)) continue;
    int fill = (version == 1 && p == 9) || (version >= 3 && p == 10)
                   ? 0
                   : static_cast<int>(1 + (p * 7 + static_cast<std::uint64_t>(version) * 61) % 250);
    std::memset(before.data() + p * kPage, fill, kPage);
  }
  return before;
}

std::vector<std::uint64_t> allPages(std::uint64_t from = 0, std::uint64_t to = kPages) {
  std::vector<std::uint64_t> out;
  for (auto p = from; p < to; ++p) out.push_back(p);
  return out;
}

// Round 1 sends everything (v1); pages 1..20 and 40 are written and round 2 resends them (v2);
// then pages in kStale are written again (v3) and the pause comes: those are stale.
const std::set<std::uint64_t> kRound2 = {1,  2,  3,  4,  5,  6,  7,  8,  9,  10, 11,
                                         12, 13, 14, 15, 16, 17, 18, 19, 20, 40};
const std::set<std::uint64_t> kStale = {2, 10, 33, 40, 63};

struct Images {
  Image v1 = std::make_shared<const std::vector<std::byte>>(memoryAt(1, {}));
  Image v2 = std::make_shared<const std::vector<std::byte>>(memoryAt(2, kRound2, *v1));
  Image paused = std::make_shared<const std::vector<std::byte>>(memoryAt(3, kStale, *v2));
};

// How the VMM's memory is populated: UFFDIO_COPY into anonymous memory, or (minor mode) written
// into a memfd's page cache and mapped with UFFDIO_CONTINUE.
enum class Memory { kAnonymous, kShmemMinor };

sys::UniqueFd memfdFor(Memory memory) {
  if (memory == Memory::kAnonymous) return {};
  return *sys::createMemfd("guest", Bytes{kPages * kPage});
}
sys::Mapping guestFor(Memory memory, const sys::UniqueFd& memfd) {
  if (memory == Memory::kAnonymous) return *sys::Mapping::anonymous(Bytes{kPages * kPage});
  return *sys::Mapping::ofFd(memfd.get(), Bytes{kPages * kPage}, GuestOffset{0},
                             PROT_READ | PROT_WRITE, MAP_SHARED);
}

// A pre-copy destination: guest memory registered with a real uffd (the VMM's, once it has
// handshaken), a staging, and a BulkReceiver that starts before the VMM.
struct PrecopyDestination {
  Memory memory;
  sys::UniqueFd memfd = memfdFor(memory);
  sys::Mapping guest = guestFor(memory, memfd);
  sys::Uffd uffd = *sys::Uffd::open(
      UFFD_FEATURE_EVENT_REMOVE |
      (memory == Memory::kShmemMinor ? UFFD_FEATURE_MISSING_SHMEM | UFFD_FEATURE_MINOR_SHMEM : 0));
  GuestLayout layout = *GuestLayout::fromMappings({{.base_host_virt_addr = guest.address().value,
                                                    .size = kPages * kPage,
                                                    .offset = 0,
                                                    .page_size = kPage}});
  store::PageMap pages{kPages};
  GuestMemoryView view = memory == Memory::kAnonymous
                             ? GuestMemoryView{}
                             : *GuestMemoryView::map(memfd, kPages* kPage, kPage, nullptr);
  PageInstaller installer{uffd, layout, pages,
                          memory == Memory::kAnonymous ? PopulationPath::kUffdCopy
                                                       : PopulationPath::kShmemMinorContinue,
                          memory == Memory::kAnonymous ? nullptr : &view};
  MigrationStats stats;
  PrecopyStaging staging;
  std::unique_ptr<transport::EventLoop> loop = std::move(*transport::EventLoop::start("pc-test"));
  std::optional<DestinationContext> ctx;
  std::unique_ptr<BulkReceiver> receiver;  // loop thread
  std::unique_ptr<FaultService> faults;    // loop thread
  std::atomic<int> fatal{0};

  // `vmm_first`: the VMM's memory is known from the start (a restarted agent); otherwise the
  // receiver has its link only and attach() comes later. start() connects it.
  PrecopyDestination(const test_support::TestPki& pki, const test_support::SourceStandIn& source,
                     Memory kind = Memory::kAnonymous, bool vmm_first = false,
                     bool start_now = true)
      : memory(kind) {
    EXPECT_TRUE(uffd.registerRange(guest.address(), guest.size(),
                                   memory == Memory::kAnonymous
                                       ? sys::RegisterMode::kMissing
                                       : sys::RegisterMode::kMissingAndMinor));
    ctx.emplace(test_support::contextFor(layout, pages, installer, uffd, stats, *loop,
                                         pki.clientContext(),
                                         source.linkParams(transport::ChannelKind::kBulk)));
    ctx->staging = &staging;
    BulkReceiver::Hooks hooks{.progressed = [] {},
                              .fatal =
                                  [this](const Error& e) {
                                    ADD_FAILURE() << e.message();
                                    ++fatal;
                                  }};
    runOnLoop(*loop, [&] {
      if (vmm_first) {
        receiver = std::make_unique<BulkReceiver>(*ctx, hooks, &staging);
      } else {
        auto params = source.linkParams(transport::ChannelKind::kBulk);
        params.page_size = 0;  // no VMM yet: the layout comes from the HelloOk
        params.memory_bytes = 0;
        receiver = std::make_unique<BulkReceiver>(
            BulkReceiver::LinkContext{*loop, pki.clientContext(), params, ctx->recorder, ctx->log},
            staging, hooks);
      }
    });
    if (start_now) start();
  }
  void start() {
    runOnLoop(*loop, [&] { receiver->start(); });
  }
  ~PrecopyDestination() {
    runOnLoop(*loop, [&] {
      if (faults) faults->stop();
      receiver->stop();
      receiver.reset();
      faults.reset();
    });
    loop->stop();
  }
  void attach() {
    runOnLoop(*loop, [&] { receiver->attach(*ctx); });
  }
  void startFaults() {
    runOnLoop(*loop, [&] {
      faults = std::make_unique<FaultService>(*ctx, FaultService::Hooks{.fatal =
                                                                            [this](const Error& e) {
                                                                              ADD_FAILURE()
                                                                                  << e.message();
                                                                              ++fatal;
                                                                            },
                                                                        .progressed = [] {}});
      ASSERT_TRUE(faults->start());
    });
  }
  // What the kernel says is in the guest (never touching a missing page, which would block).
  Bitmap present() const { return *sys::presentPages(::getpid(), guest.address(), kPages, kPage); }
  bool pageIs(std::uint64_t p, const Image& image) const {
    return std::memcmp(guest.data() + p * kPage, image->data() + p * kPage, kPage) == 0;
  }
};

std::vector<std::uint64_t> wordsOf(const std::set<std::uint64_t>& pages) {
  std::vector<std::uint64_t> words(Bitmap::wordsFor(kPages), 0);
  for (auto p : pages) words[p / 64] |= Bitmap::maskOf(p);
  return words;
}

std::set<std::uint64_t> setOf(const std::vector<std::uint64_t>& pages) {
  return {pages.begin(), pages.end()};
}

std::set<std::uint64_t> everyPageBut(const std::set<std::uint64_t>& left_out) {
  std::set<std::uint64_t> out;
  for (auto p : allPages()) {
    if (!left_out.contains(p)) out.insert(p);
  }
  return out;
}

// Rounds 1 and 2 (round 1 leaves page 63 for round 2, so that "everything arrived" is
// observable), then the stale set in two chunks, the second with `last`.
void runRounds(test_support::SourceStandIn& source, PrecopyDestination& d, const Images& im,
               bool switch_too = true) {
  ASSERT_TRUE(waitUntil([&] { return source.resumes() >= 1; }, 10s));
  ASSERT_TRUE(source.sendPages(allPages(0, kPages - 1), im.v1));
  std::vector<std::uint64_t> round2(kRound2.begin(), kRound2.end());
  round2.push_back(kPages - 1);
  ASSERT_TRUE(source.sendPages(round2, im.v2));
  ASSERT_TRUE(waitUntil([&] { return d.staging.stagedPages() == kPages; }, 10s));
  if (!switch_too) return;
  ASSERT_TRUE(source.sendStalePages({2, 10, 33}, /*last=*/false));
  ASSERT_TRUE(source.sendStalePages({40, 63}, /*last=*/true));
  ASSERT_TRUE(waitUntil([&] { return d.staging.switched(); }, 10s));
}

// Every non-stale page holds the paused memory; no stale page is in the guest at all.
void expectNothingStaleInstalled(PrecopyDestination& d, const Images& im) {
  auto present = d.present();
  for (auto p : allPages()) {
    if (kStale.contains(p)) {
      EXPECT_FALSE(d.pages.isDone(PageIndex{p})) << "stale page " << p << " installed";
      EXPECT_FALSE(present.test(p)) << "stale page " << p << " is in the guest";
    } else {
      ASSERT_TRUE(d.pages.isDone(PageIndex{p})) << p;
      EXPECT_TRUE(d.pageIs(p, im.paused)) << "page " << p << " is not the paused memory";
    }
  }
}

class PrecopyOnEveryPath : public ::testing::TestWithParam<Memory> {};

TEST_P(PrecopyOnEveryPath, StalePagesAreNeverInstalledFromTheStaging) {
  Images im;
  test_support::TestPki pki;
  test_support::SourceStandIn source(pki, {.memory = *im.paused, .stream_bulk = false});
  PrecopyDestination d(pki, source, GetParam());
  runRounds(source, d, im);
  EXPECT_EQ(d.staging.staleDropped(), kStale.size());
  EXPECT_EQ(d.pages.doneCount(), 0u) << "no VMM yet";
  // The VMM's handshake after the switch: every staged, non-stale page goes in.
  d.attach();
  ASSERT_TRUE(waitUntil([&] { return d.receiver->stagingDrained(); }, 10s));
  EXPECT_EQ(d.pages.doneCount(), kPages - kStale.size());
  expectNothingStaleInstalled(d, im);
  EXPECT_EQ(d.staging.installedFromStaging(), kPages - kStale.size());
  // Post-copy brings the stale pages as they were at the pause.
  ASSERT_TRUE(
      source.sendPages(std::vector<std::uint64_t>(kStale.begin(), kStale.end()), im.paused));
  ASSERT_TRUE(waitUntil([&] { return d.pages.complete(); }, 10s));
  for (auto p : allPages()) EXPECT_TRUE(d.pageIs(p, im.paused)) << p;
  EXPECT_EQ(d.fatal.load(), 0);
}

TEST_P(PrecopyOnEveryPath, AHandshakeBeforeTheSwitchInstallsNothingUntilLast) {
  Images im;
  test_support::TestPki pki;
  test_support::SourceStandIn source(pki, {.memory = *im.paused, .stream_bulk = false});
  PrecopyDestination d(pki, source, GetParam());
  ASSERT_TRUE(waitUntil([&] { return source.resumes() >= 1; }, 10s));
  d.attach();  // the VMM is there before any round page
  runRounds(source, d, im, /*switch_too=*/false);
  ASSERT_TRUE(source.sendStalePages({2, 10, 33}, /*last=*/false));
  ASSERT_TRUE(waitUntil([&] { return d.staging.staleDropped() == 3; }, 10s));
  EXPECT_FALSE(d.staging.switched());
  EXPECT_EQ(d.pages.doneCount(), 0u) << "installed before the StalePages frame with last";
  EXPECT_EQ(d.present().count(), 0u);
  ASSERT_TRUE(source.sendStalePages({40, 63}, /*last=*/true));
  ASSERT_TRUE(waitUntil([&] { return d.receiver->stagingDrained(); }, 10s));
  expectNothingStaleInstalled(d, im);
  // After the switch pages are installed as they arrive.
  ASSERT_TRUE(source.sendPages({2, 10}, im.paused));
  ASSERT_TRUE(waitUntil([&] { return d.pages.isDone(PageIndex{10}); }, 10s));
  EXPECT_TRUE(d.pageIs(2, im.paused));
  EXPECT_TRUE(d.pageIs(10, im.paused));
}

TEST_P(PrecopyOnEveryPath, AFaultOnAStagedPageIsServedFromTheStagingAndAStaleOneFromTheSource) {
  Images im;
  test_support::TestPki pki;
  test_support::SourceStandIn source(pki, {.memory = *im.paused, .stream_bulk = false});
  PrecopyDestination d(pki, source, GetParam());
  runRounds(source, d, im);
  // The VMM is there, but the staging is not drained (no attach): only faults install.
  d.startFaults();
  std::vector<std::byte> seen(3 * kPage);
  std::thread vcpu([&] {
    std::memcpy(seen.data(), d.guest.data() + 5 * kPage, kPage);               // staged, round 2
    std::memcpy(seen.data() + kPage, d.guest.data() + 30 * kPage, kPage);      // staged, round 1
    std::memcpy(seen.data() + 2 * kPage, d.guest.data() + 33 * kPage, kPage);  // stale
  });
  vcpu.join();
  EXPECT_EQ(std::memcmp(seen.data(), im.paused->data() + 5 * kPage, kPage), 0);
  EXPECT_EQ(std::memcmp(seen.data() + kPage, im.paused->data() + 30 * kPage, kPage), 0);
  EXPECT_EQ(std::memcmp(seen.data() + 2 * kPage, im.paused->data() + 33 * kPage, kPage), 0)
      << "the stale page must come from the paused memory, not the staging";
  EXPECT_EQ(source.pagesRequested(), 1u) << "only the stale page went over the network";
  EXPECT_EQ(d.staging.installedFromStaging(), 2u);
  EXPECT_EQ(d.fatal.load(), 0);
}

TEST(PrecopyDestination, ALinkCutDuringTheRoundsResumesWithWhatIsStaged) {
  Images im;
  test_support::TestPki pki;
  test_support::SourceStandIn source(pki, {.memory = *im.paused, .stream_bulk = false});
  PrecopyDestination d(pki, source);
  ASSERT_TRUE(waitUntil([&] { return source.resumes() >= 1; }, 10s));
  ASSERT_TRUE(source.sendPages(allPages(0, 32), im.v1));
  ASSERT_TRUE(waitUntil([&] { return d.staging.stagedPages() == 32; }, 10s));
  source.dropConnections();
  ASSERT_TRUE(waitUntil([&] { return source.resumes() >= 2; }, 10s));
  EXPECT_EQ(source.lastResume(), wordsOf(setOf(allPages(0, 32))))
      << "the Resume after the cut names every staged page";
  // The rounds go on over the new link; after the switch a cut reports staged minus stale.
  runRounds(source, d, im);
  source.dropConnections();
  ASSERT_TRUE(waitUntil([&] { return source.resumes() >= 3; }, 10s));
  EXPECT_EQ(source.lastResume(), wordsOf(everyPageBut(kStale)));
  d.attach();
  ASSERT_TRUE(waitUntil([&] { return d.receiver->stagingDrained(); }, 10s));
  expectNothingStaleInstalled(d, im);
}

INSTANTIATE_TEST_SUITE_P(Memory, PrecopyOnEveryPath,
                         ::testing::Values(Memory::kAnonymous, Memory::kShmemMinor),
                         [](const auto& param_info) {
                           return param_info.param == Memory::kAnonymous ? "uffd_copy"
                                                                         : "shmem_minor_continue";
                         });

// A restarted destination agent has lost what the dead one staged: it reports only what is
// installed, so the source sends the rest again -- and nothing it lost is assumed.
TEST(PrecopyDestination, ARestartedAgentReportsOnlyWhatIsInstalled) {
  Images im;
  test_support::TestPki pki;
  test_support::SourceStandIn source(pki, {.memory = *im.paused, .stream_bulk = false});
  std::set<std::uint64_t> installed;
  {
    PrecopyDestination dead(pki, source);
    runRounds(source, dead, im);
    // The dead agent had installed a few pages after the switch (from the staging).
    dead.attach();
    ASSERT_TRUE(waitUntil([&] { return dead.receiver->stagingDrained(); }, 10s));
    for (std::uint64_t p : {0, 1, 3, 4}) installed.insert(p);
  }
  const auto resumes_before = source.resumes();
  PrecopyDestination restarted(pki, source, Memory::kAnonymous, /*vmm_first=*/true,
                               /*start_now=*/false);
  // Its page map recovered (here: installed by hand) pages 0, 1, 3 and 4.
  for (auto p : installed) {
    ASSERT_TRUE(restarted.installer.install(
        PageIndex{p}, 1, im.paused->data() + p * kPage, [] {}, false));
  }
  restarted.start();
  ASSERT_TRUE(waitUntil([&] { return source.resumes() > resumes_before; }, 10s));
  EXPECT_EQ(source.lastResume(), wordsOf(installed)) << "staged pages were lost with the agent";
  // The source (switched already) sends its stale set again, then everything not installed.
  ASSERT_TRUE(source.sendStalePages(std::vector<std::uint64_t>(kStale.begin(), kStale.end()),
                                    /*last=*/true));
  std::vector<std::uint64_t> rest;
  for (auto p : allPages()) {
    if (!installed.contains(p)) rest.push_back(p);
  }
  ASSERT_TRUE(source.sendPages(rest, im.paused));
  ASSERT_TRUE(waitUntil([&] { return restarted.pages.complete(); }, 10s));
  for (auto p : allPages()) EXPECT_TRUE(restarted.pageIs(p, im.paused)) << p;
  EXPECT_EQ(restarted.staging.installedFromStaging(), 0u);
}

}  // namespace
}  // namespace lazymig::agent
