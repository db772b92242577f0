// The destination's end of the bulk stream, on real userfaultfd: frames in, pages installed
// and the page map updated; a malformed or unexpected frame is named in the error and
// installs nothing; and over a real TLS link, a source's whole stream (after the Resume)
// installs every page.
#include "agent/destination/bulk_receiver.h"

#include <linux/userfaultfd.h>

#include <gtest/gtest.h>

#include <chrono>
#include <cstring>
#include <functional>
#include <mutex>
#include <thread>

#include "agent/core/loop_sync.h"
#include "sys/mapping.h"
#include "test_support.h"

namespace lazymig::agent {
namespace {

using namespace std::chrono_literals;
constexpr std::uint64_t kPage = 4096;
constexpr std::uint64_t kPages = 64;

using test_support::waitUntil;

std::vector<std::byte> sourceMemory() { return test_support::sourceMemory(kPages, kPage); }

// Guest memory registered with a real uffd, and everything a BulkReceiver works with.
struct Destination {
  sys::Mapping guest = *sys::Mapping::anonymous(Bytes{kPages * kPage});
  sys::Uffd uffd = *sys::Uffd::open(0);
  GuestLayout layout = *GuestLayout::fromMappings({{.base_host_virt_addr = guest.address().value,
                                                    .size = kPages * kPage,
                                                    .offset = 0,
                                                    .page_size = kPage}});
  store::PageMap pages{kPages};
  PageInstaller installer{uffd, layout, pages};
  MigrationStats stats;
  std::unique_ptr<transport::EventLoop> loop = std::move(*transport::EventLoop::start("bulk-test"));
  std::optional<DestinationContext> ctx;
  std::unique_ptr<BulkReceiver> receiver;  // loop thread
  std::mutex mu;
  std::vector<std::string> fatal;
  int progressed = 0;

  Destination(const test_support::TestPki& pki, SourceLinkParams link) {
    EXPECT_TRUE(uffd.registerRange(guest.address(), guest.size(), sys::RegisterMode::kMissing));
    ctx.emplace(test_support::contextFor(layout, pages, installer, uffd, stats, *loop,
                                         pki.clientContext(), std::move(link)));
    runOnLoop(*loop, [&] {
      receiver = std::make_unique<BulkReceiver>(
          *ctx, BulkReceiver::Hooks{.progressed =
                                        [&] {
                                          std::lock_guard l(mu);
                                          ++progressed;
                                        },
                                    .fatal =
                                        [&](const Error& e) {
                                          std::lock_guard l(mu);
                                          fatal.push_back(e.message());
                                        }});
    });
  }
  ~Destination() {
    runOnLoop(*loop, [&] {
      receiver->stop();
      receiver.reset();
    });
    loop->stop();
  }
  // Feeds one encoded frame (header included) as the link would.
  void feed(std::string_view frame) {
    auto bytes = std::as_bytes(std::span(frame.data(), frame.size()));
    auto header = transport::decodeHeader(bytes.first<transport::kHeaderSize>(), {});
    ASSERT_TRUE(header) << header.error().message();
    runOnLoop(*loop, [&] { receiver->onFrame(*header, bytes.subspan(transport::kHeaderSize)); });
  }
  bool pageIs(std::uint64_t page, const std::vector<std::byte>& src) {
    return std::memcmp(guest.data() + page * kPage, src.data() + page * kPage, kPage) == 0;
  }
};

std::string pageDataFrame(std::uint64_t first, std::uint32_t count,
                          const std::vector<std::byte>& src) {
  auto prefix = transport::encodePageDataPrefix(first, count, kPage);
  std::string frame(reinterpret_cast<const char*>(prefix.data()), prefix.size());
  frame.append(reinterpret_cast<const char*>(src.data() + first * kPage), count * kPage);
  return frame;
}

TEST(BulkReceiver, FramesInPagesInstalledAndThePageMapUpdated) {
  const auto src = sourceMemory();
  test_support::TestPki pki;
  Destination d(pki, SourceLinkParams{});
  d.feed(pageDataFrame(0, 3, src));
  d.feed(transport::encodeZeroRange({3, 1}));
  EXPECT_TRUE(d.fatal.empty()) << d.fatal.front();
  EXPECT_EQ(d.pages.doneCount(), 4u);
  for (std::uint64_t p = 0; p < 3; ++p) {
    EXPECT_TRUE(d.pages.isDone(PageIndex{p}));
    EXPECT_TRUE(d.pageIs(p, src)) << "page " << p;
  }
  EXPECT_TRUE(d.pageIs(3, src)) << "the zero page";
  EXPECT_FALSE(d.pages.isDone(PageIndex{4}));
  EXPECT_EQ(d.stats.bulk_pages.load(), 3u);
  EXPECT_EQ(d.stats.zero_pages.load(), 1u);
  EXPECT_EQ(d.progressed, 2);
  // The same pages again: nothing installed twice.
  d.feed(pageDataFrame(0, 3, src));
  EXPECT_EQ(d.stats.bulk_pages.load(), 3u);
  EXPECT_EQ(d.pages.doneCount(), 4u);
}

TEST(BulkReceiver, AMalformedFrameIsNamedInTheErrorAndInstallsNothing) {
  const auto src = sourceMemory();
  test_support::TestPki pki;
  Destination d(pki, SourceLinkParams{});
  // A run that ends past the guest's last page.
  auto frame = pageDataFrame(kPages - 2, 2, src);
  std::uint32_t count = 3;
  std::memcpy(frame.data() + transport::kHeaderSize + 8, &count, sizeof(count));
  d.feed(frame);
  ASSERT_EQ(d.fatal.size(), 1u);
  EXPECT_NE(d.fatal[0].find("PageData"), std::string::npos) << d.fatal[0];
  EXPECT_EQ(d.pages.doneCount(), 0u);
  // A frame the bulk link never carries.
  d.feed(transport::encodePageRequest({{1}}));
  ASSERT_EQ(d.fatal.size(), 2u);
  EXPECT_NE(d.fatal[1].find("unexpected frame PageRequest"), std::string::npos) << d.fatal[1];
  // Nor ServeTimes (protocol 1.2), which only follows demand replies on the urgent link.
  d.feed(transport::encodeServeTimes({1, 10, 20}));
  ASSERT_EQ(d.fatal.size(), 3u);
  EXPECT_NE(d.fatal[2].find("unexpected frame ServeTimes"), std::string::npos) << d.fatal[2];
  EXPECT_EQ(d.pages.doneCount(), 0u);
}

// Issue 19: a source may send its (empty) stale set to every destination of a pre-copy
// migration; one without pre-copy ignores it, and a malformed one is still named.
TEST(BulkReceiver, WithoutPrecopyStalePagesChangeNothing) {
  const auto src = sourceMemory();
  test_support::TestPki pki;
  Destination d(pki, SourceLinkParams{});
  transport::StalePages stale{.first_page = 0, .last = true, .words = {~std::uint64_t{0}}};
  d.feed(transport::encodeStalePages(stale));
  d.feed(pageDataFrame(0, 2, src));
  EXPECT_TRUE(d.fatal.empty()) << d.fatal.front();
  EXPECT_EQ(d.pages.doneCount(), 2u) << "pages are installed as they come, as before";
  stale.first_page = 3;  // not a multiple of 64
  d.feed(transport::encodeStalePages(stale));
  ASSERT_EQ(d.fatal.size(), 1u);
  EXPECT_NE(d.fatal[0].find("StalePages"), std::string::npos) << d.fatal[0];
}

TEST(BulkReceiver, TheSourcesStreamAfterTheResumeInstallsEveryPage) {
  const auto src = sourceMemory();
  test_support::TestPki pki;
  test_support::SourceStandIn source(pki, {.migration_id = "bulk", .memory = src});
  Destination d(pki, source.linkParams(transport::ChannelKind::kBulk));
  // Pages already installed (by demand faults) are in the Resume: not sent again.
  d.feed(pageDataFrame(0, 8, src));
  runOnLoop(*d.loop, [&] { d.receiver->start(); });
  ASSERT_TRUE(waitUntil([&] { return d.pages.complete(); }, 20s));
  ASSERT_TRUE(waitUntil(
      [&] {
        bool done = false;
        runOnLoop(*d.loop, [&] { done = d.receiver->bulkDone(); });
        return done;
      },
      20s));
  EXPECT_TRUE(d.fatal.empty());
  for (std::uint64_t p = 0; p < kPages; ++p) EXPECT_TRUE(d.pageIs(p, src)) << "page " << p;
  EXPECT_EQ(d.stats.bulk_pages.load() + d.stats.zero_pages.load(), kPages);
  EXPECT_EQ(d.stats.eexist_races.load(), 0u) << "the source sent pages the Resume had";
}

}  // namespace
}  // namespace lazymig::agent
