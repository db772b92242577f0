// A live source (issue 19): SourceMigration handed a running guest's memory with its real
// write-protect uffd and pagemap (WP_ASYNC, PAGEMAP_SCAN), serving a stand-in destination over
// real TLS through the real PeerListener, while a writer thread races every round. The stand-in
// applies what the bulk channel brings as the contract says a destination does: pages before
// the StalePages frame with `last` to a staging copy, StalePages drop from it, pages after it
// are post-copy. After the switch its copy must equal the paused memory page for page.
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include <atomic>
#include <random>
#include <thread>

#include "sys/memory_fd.h"
#include "sys/unix_socket.h"
#include "sys/write_tracker.h"
#include "tests/agent/source/source_peer.h"

namespace lazymig::agent {
namespace {

using source_test::TestDestination;
using transport::ChannelKind;
using transport::FrameType;
using Frame = TestDestination::Frame;
constexpr std::uint64_t kPages = 256;  // SourcePeer::kPages
constexpr std::uint64_t kPage = 4096;

// The source VMM: guest memory in a memfd, its own mapping tracked write-protect.
struct LiveVmm {
  sys::UniqueFd memory = std::move(*sys::createMemfd("precopy-test", Bytes{kPages * kPage}));
  sys::Mapping mapping = std::move(*sys::Mapping::ofFd(
      memory.get(), Bytes{kPages * kPage}, GuestOffset{0}, PROT_READ | PROT_WRITE, MAP_SHARED));
  std::optional<sys::WriteTracker> tracker;

  LiveVmm() {
    // Every fourth page stays a hole (zero); the others carry their index.
    for (std::uint64_t p = 0; p < kPages; ++p)
      if (p % 4) word(p, 0).store(p);
    auto t = sys::WriteTracker::trackOwnMemory({{mapping.address(), mapping.size()}}, Bytes{kPage});
    EXPECT_TRUE(t) << t.error().message();
    tracker = std::move(*t);
  }
  std::atomic_ref<std::uint64_t> word(std::uint64_t page, std::uint64_t w) const {
    auto* at = mapping.data() + page * kPage + w * 8;
    return std::atomic_ref<std::uint64_t>(*reinterpret_cast<std::uint64_t*>(at));
  }
  Status handOver(const std::string& socket, bool live) {
    auto s = sys::UnixSocket::connect(socket);
    if (!s) return std::unexpected(s.error());
    vmm::GuestRegionMapping region;
    region.base_host_virt_addr = mapping.address().value;
    region.size = kPages * kPage;
    std::vector<int> fds{memory.get()};
    if (live) fds.insert(fds.end(), {tracker->uffd().pollFd(), tracker->pagemap().get()});
    return vmm::sendHandshake(*s, {region}, fds);
  }
};

// A guest vCPU: writes both ends of random pages, mostly a hot set, until stopped.
class Writer {
 public:
  explicit Writer(const LiveVmm& vmm)
      : thread_([this, &vmm] {
          std::mt19937_64 rng(19);
          for (std::uint64_t value = 1000; !stop_.load(); ++value) {
            const std::uint64_t page = rng() % 3 ? 40 + rng() % 24 : rng() % kPages;
            vmm.word(page, 0).store(value);
            vmm.word(page, kPage / 8 - 1).store(value);
            writes_.fetch_add(1);
            if (value % 64 == 0) std::this_thread::yield();
          }
        }) {}
  ~Writer() { pause(); }
  // The orchestrator pauses the source VM.
  void pause() {
    stop_ = true;
    if (thread_.joinable()) thread_.join();
  }
  std::uint64_t writes() const { return writes_.load(); }

 private:
  std::atomic<bool> stop_{false};
  std::atomic<std::uint64_t> writes_{0};
  std::thread thread_;
};

// The stand-in destination's view of the bulk channel, applied in the order it arrived, as a
// destination installs it: the staged pages left after the StalePages with `last` are
// installed then, and an installed page is never written again (UFFDIO_COPY's EEXIST).
struct DestinationCopy {
  std::vector<std::vector<std::byte>> page = std::vector<std::vector<std::byte>>(kPages);
  std::vector<bool> has = std::vector<bool>(kPages);
  std::vector<bool> installed = std::vector<bool>(kPages);
  std::uint64_t staged_frames = 0, dropped = 0, resent_after_switch = 0;
  bool switched = false, bulk_done = false;
  std::vector<bool> stale = std::vector<bool>(kPages);

  void apply(const std::vector<Frame>& frames) {
    const transport::Layout layout{kPage, kPages};
    for (const auto& f : frames) {
      if (f.type == FrameType::kPageData) {
        auto d = transport::decodePageData(f.payload, layout);
        ASSERT_TRUE(d);
        for (std::uint32_t i = 0; i < d->count; ++i) {
          auto bytes = d->data.subspan(i * kPage, kPage);
          store(d->first_page + i, {bytes.begin(), bytes.end()});
        }
      } else if (f.type == FrameType::kZeroRange) {
        auto z = transport::decodeZeroRange(f.payload, layout);
        ASSERT_TRUE(z);
        for (std::uint64_t p = z->first_page; p < z->first_page + z->count; ++p)
          store(p, std::vector<std::byte>(kPage));
      } else if (f.type == FrameType::kStalePages) {
        // Every channel after the switch hears it again; it drops staged copies only.
        auto s = transport::decodeStalePages(f.payload, layout);
        ASSERT_TRUE(s);
        for (std::uint64_t p = 0; p < s->words.size() * 64; ++p) {
          const std::uint64_t q = s->first_page + p;
          if (!(s->words[p / 64] >> (p % 64) & 1) || installed[q]) continue;
          stale[q] = true;
          dropped += has[q];
          has[q] = false;
        }
        if (s->last && !switched) installed = has;
        switched = switched || s->last;
      } else if (f.type == FrameType::kBulkDone) {
        bulk_done = true;
      }
    }
  }
  // What a reconnecting destination's Resume says it has: installed ∪ staged.
  std::string resume() const {
    std::vector<std::uint64_t> words(kPages / 64, 0);
    for (std::uint64_t p = 0; p < kPages; ++p)
      if (has[p]) words[p / 64] |= 1ull << (p % 64);
    return transport::encodeResume({0, true, words});
  }
  void store(std::uint64_t p, std::vector<std::byte> bytes) {
    ASSERT_FALSE(bulk_done);
    staged_frames += !switched;
    if (switched && installed[p]) return;
    if (switched) installed[p] = true;
    if (switched && stale[p]) ++resent_after_switch;
    page[p] = std::move(bytes);
    has[p] = true;
  }
};

class PrecopyMigrationTest : public source_test::SourcePeer {
 protected:
  static_assert(SourcePeer::kPages == kPages);
  void start(std::string_view precopy, bool live) {
    createMigration(false, *parsePrecopyPolicy(precopy, std::chrono::seconds(60)));
    listen();
    ASSERT_TRUE(vmm_.handOver(dir_ + "/handover.sock", live));
    ASSERT_TRUE(eventually([&] { return migration_->state() == MigrationState::kServing; }));
  }
  std::unique_ptr<TestDestination> channel(ChannelKind kind) {
    auto d = dial();
    d->send(transport::encodeHello(d->hello(kind, kBytes)));
    EXPECT_TRUE(d->waitFor(FrameType::kHelloOk));
    return d;
  }
  // A first connection: the destination has nothing yet.
  static void resume(TestDestination& bulk) {
    bulk.send(transport::encodeResume({0, true, std::vector<std::uint64_t>(kPages / 64, 0)}));
  }
  nlohmann::json precopy() { return migration_->toJson()["precopy"]; }
  template <class Pred>
  bool precopyUntil(Pred pred) {
    return eventually([&] { return pred(precopy()); });
  }
  static std::vector<Frame> framesOf(TestDestination& d) {
    std::vector<Frame> out;
    d.waitUntil([&](const std::vector<Frame>& f) { return out = f, true; });
    return out;
  }
  static std::uint64_t count(const std::vector<Frame>& frames, FrameType type) {
    return std::count_if(frames.begin(), frames.end(),
                         [&](const Frame& f) { return f.type == type; });
  }
  // The stand-in's copy equals the paused memory, page for page.
  void expectCopyEqualsMemory(const DestinationCopy& copy) {
    std::uint64_t missing = 0, different = 0;
    for (std::uint64_t p = 0; p < kPages; ++p) {
      if (!copy.has[p]) {
        ++missing;
      } else if (std::memcmp(copy.page[p].data(), vmm_.mapping.data() + p * kPage, kPage) != 0) {
        ++different;
      }
    }
    EXPECT_EQ(missing, 0u) << "pages never sent, or stale and not sent again";
    EXPECT_EQ(different, 0u) << "pages older than the paused memory";
  }

  double metric(const std::string& family) { return metricValue(family, "node=\"n\""); }
  double switches(const std::string& reason) {
    return metricValue("lazymig_precopy_source_switches_total", "reason=\"" + reason + "\"");
  }
  // The Prometheus families per round agree with the migration's status: every ended round
  // counted once with the pages it sent (a round the pause cut short never ended), a dirty
  // rate for every ended round but the first, and one switch with its reason and stale pages.
  void expectRoundMetricsMatch(const nlohmann::json& status, const std::string& reason) {
    const auto& rounds = status["rounds"];
    double ended = 0, sent = 0;
    for (const auto& round : rounds) {
      if (round["duration_ms"].get<double>() <= 0) continue;  // cut short by the pause
      ++ended;
      sent += round["pages_sent"].get<double>();
    }
    EXPECT_GE(ended, 1);
    EXPECT_EQ(metric("lazymig_precopy_source_rounds_total"), ended) << status;
    EXPECT_EQ(metric("lazymig_precopy_source_round_pages_count"), ended);
    EXPECT_EQ(metric("lazymig_precopy_source_round_pages_sum"), sent) << status;
    EXPECT_EQ(metric("lazymig_precopy_source_round_duration_seconds_count"), ended);
    EXPECT_EQ(metric("lazymig_precopy_source_dirty_pages_per_second_count"), ended - 1);
    EXPECT_EQ(switches(reason), 1) << status;
    for (auto other : metrics::kPrecopySwitchReasons) {
      if (other != reason) {
        EXPECT_EQ(switches(std::string(other)), 0) << other;
      }
    }
    EXPECT_EQ(metric("lazymig_precopy_source_stale_pages_count"), 1);
    EXPECT_EQ(metric("lazymig_precopy_source_stale_pages_sum"),
              status["stale_pages"].get<double>());
  }

  LiveVmm vmm_;
};

// Answers a Ping only after every frame before it on the channel was handled.
void roundTrip(TestDestination& channel) {
  channel.send(transport::encodePing(FrameType::kPing, {1}));
  ASSERT_TRUE(channel.waitFor(FrameType::kPong));
}

TEST_F(PrecopyMigrationTest, RoundsRaceAWriterAndTheSwitchLeavesTheCopyEqualToThePausedMemory) {
  // Rounds as long as a real link makes them, so that the writer runs during each.
  config_.migration.bulk_rate_limit_mib_s = 8;
  start("rounds 6", /*live=*/true);
  Writer writer(vmm_);
  auto urgent = channel(ChannelKind::kUrgent);
  auto bulk = channel(ChannelKind::kBulk);
  resume(*bulk);
  urgent->send(transport::encodePageRequest({{45}}));
  roundTrip(*urgent);
  ASSERT_TRUE(precopyUntil([](const nlohmann::json& p) { return p["state"] == "ready_to_pause"; }))
      << precopy();
  EXPECT_EQ(precopy()["switch_reason"], "rounds_done");
  EXPECT_EQ(precopy()["ready_after_round"], 6) << "exactly the rounds asked for, then ready";
  EXPECT_EQ(count(framesOf(*urgent), FrameType::kPageData), 0u)
      << "a page served while the source VM still runs";
  writer.pause();
  ASSERT_TRUE(migration_->paused());

  ASSERT_TRUE(bulk->waitFor(FrameType::kBulkDone));
  ASSERT_TRUE(urgent->waitFor(FrameType::kPageData)) << "the held request, served at the switch";
  DestinationCopy copy;
  copy.apply(framesOf(*bulk));
  copy.switched = true;  // the urgent channel's pages are post-copy, sent beside the bulk
  copy.bulk_done = false;
  copy.apply(framesOf(*urgent));
  expectCopyEqualsMemory(copy);
  const auto status = precopy();
  EXPECT_EQ(status["state"], "switched");
  ASSERT_GE(status["rounds"].size(), 6u);
  std::uint64_t caught = 0;
  for (std::size_t i = 1; i < status["rounds"].size(); ++i) {
    const auto& round = status["rounds"][i];
    caught += round["pages_written"].get<std::uint64_t>();
    // The metrics per round: a round that found writes has a dirty rate.
    EXPECT_EQ(round["pages_written"] > 0, round["dirty_pages_per_s"] > 0.0) << round;
    EXPECT_GE(round["duration_ms"].get<double>(), 0.0);
  }
  EXPECT_GT(caught, 0u) << "no round caught a write: the race was not exercised";
  EXPECT_GT(copy.staged_frames, 0u);
  EXPECT_GT(writer.writes(), 0u);
  EXPECT_EQ(count(framesOf(*bulk), FrameType::kStalePages), 1u);
  expectRoundMetricsMatch(status, "rounds_done");
}

// The pause cuts round 2 short: pages its scan reported and that were not sent again are stale
// too, not only what the scan after the pause finds (the destination holds round 1's copy).
// The guest here is the test itself: it writes each page once it arrived in round 1, until
// round 2 begins, and then nothing: the scan after the pause finds (almost) nothing.
TEST_F(PrecopyMigrationTest, APauseThatCutsARoundShortNamesItsUnsentPagesStale) {
  config_.migration.bulk_rate_limit_mib_s = 1;
  config_.migration.bulk_batch_pages = 4;
  start("rounds 1000", /*live=*/true);
  auto bulk = channel(ChannelKind::kBulk);
  resume(*bulk);
  std::size_t seen = 0;
  std::uint64_t written = 0;
  ASSERT_TRUE(precopyUntil([&](const nlohmann::json& p) {
    auto frames = framesOf(*bulk);
    DestinationCopy arrived;
    arrived.apply({frames.begin() + seen, frames.end()});
    seen = frames.size();
    for (std::uint64_t page = 0; page < kPages; ++page) {
      if (arrived.has[page]) vmm_.word(page, 1).store(++written);
    }
    return p["rounds"].size() >= 2;
  })) << precopy();
  ASSERT_TRUE(migration_->paused());
  ASSERT_TRUE(bulk->waitFor(FrameType::kBulkDone));
  const auto status = precopy();
  ASSERT_EQ(status["rounds"].size(), 2u) << status;
  ASSERT_GT(status["rounds"][1]["pages_written"], 64) << status;
  ASSERT_LT(status["rounds"][1]["pages_sent"], status["rounds"][1]["pages_written"])
      << "the pause did not cut the round short";
  DestinationCopy copy;
  copy.apply(framesOf(*bulk));
  expectCopyEqualsMemory(copy);
  EXPECT_GT(copy.dropped, 0u);
  EXPECT_EQ(status["stale_pages"].get<std::uint64_t>(), copy.resent_after_switch)
      << "every stale page is sent once after the switch";
  // Round 2 never ended: one round counted, and a switch with no reason to switch yet.
  expectRoundMetricsMatch(status, "paused_before_ready");
  EXPECT_EQ(metric("lazymig_precopy_source_rounds_total"), 1);
}

// The bulk link is cut during a round and again right after the switch: each new channel
// resumes from what the destination has, and the one after the switch hears the stale set again
// before any page.
TEST_F(PrecopyMigrationTest, LinkCutsDuringARoundAndAfterTheSwitchLoseNothing) {
  config_.migration.bulk_rate_limit_mib_s = 2;
  config_.migration.bulk_batch_pages = 8;
  start("rounds 1000", /*live=*/true);
  Writer writer(vmm_);
  DestinationCopy copy;
  auto bulk = channel(ChannelKind::kBulk);
  resume(*bulk);
  ASSERT_TRUE(bulk->waitUntil(
      [](const std::vector<Frame>& f) { return count(f, FrameType::kPageData) >= 4; }));
  copy.apply(framesOf(*bulk));
  bulk.reset();  // the link breaks; what was in flight is lost

  bulk = channel(ChannelKind::kBulk);
  bulk->send(copy.resume());
  ASSERT_TRUE(precopyUntil([](const nlohmann::json& p) { return p["round"] >= 3; })) << precopy();
  writer.pause();
  ASSERT_TRUE(migration_->paused());
  ASSERT_TRUE(bulk->waitUntil([](const std::vector<Frame>& f) {
    auto last = std::find_if(f.begin(), f.end(), [](const Frame& x) {
      return x.type == FrameType::kStalePages &&
             transport::decodeStalePages(x.payload, {4096, kPages})->last;
    });
    return last != f.end() && std::count_if(last, f.end(), [](const Frame& x) {
                                return x.type == FrameType::kPageData;
                              }) >= 2;
  }));
  copy.apply(framesOf(*bulk));
  ASSERT_TRUE(copy.switched);
  bulk.reset();

  bulk = channel(ChannelKind::kBulk);
  bulk->send(copy.resume());
  ASSERT_TRUE(bulk->waitFor(FrameType::kBulkDone));
  auto frames = framesOf(*bulk);
  EXPECT_EQ(frames[1].type, FrameType::kStalePages) << "the stale set again, before any page";
  copy.apply(frames);
  expectCopyEqualsMemory(copy);
}

// A source agent restarted during the rounds takes the memory back from the VMM, but not the
// write tracking: it cannot tell a current staged copy from an old one, so at the switch it
// names every page the destination says it has stale, and sends everything again.
TEST_F(PrecopyMigrationTest, ARestartedSourceVouchesForNoPrecopiedPage) {
  createMigration(false, *parsePrecopyPolicy("auto", std::chrono::seconds(60)));
  listen();
  struct stat st {};
  ASSERT_EQ(::fstat(vmm_.memory.get(), &st), 0);
  RuntimeRecord runtime;
  runtime.vmm_pid = ::getpid();  // the test is the VMM: its fd table holds the memfd
  runtime.regions.resize(1);
  runtime.regions[0].base_host_virt_addr = vmm_.mapping.address().value;
  runtime.regions[0].size = kBytes;
  runtime.memory = FileIdentity{st.st_dev, st.st_ino};
  runtime.live_source = true;
  ASSERT_TRUE(migration_->resume(runtime));
  ASSERT_EQ(migration_->state(), MigrationState::kServing);
  EXPECT_EQ(precopy()["switch_reason"], "no_write_tracking") << precopy();

  auto urgent = channel(ChannelKind::kUrgent);
  auto bulk = channel(ChannelKind::kBulk);
  // What the destination staged from the dead agent's rounds: the first half, old copies.
  std::vector<std::uint64_t> staged(kPages / 64, 0);
  staged[0] = staged[1] = ~0ull;
  bulk->send(transport::encodeResume({0, true, staged}));
  urgent->send(transport::encodePageRequest({{3}}));
  roundTrip(*urgent);
  roundTrip(*bulk);
  EXPECT_EQ(count(framesOf(*urgent), FrameType::kPageData), 0u) << "held until the switch";
  EXPECT_EQ(count(framesOf(*bulk), FrameType::kPageData), 0u) << "no round without tracking";
  vmm_.word(7, 0).store(77);  // the guest still runs
  ASSERT_TRUE(migration_->paused());
  ASSERT_TRUE(bulk->waitFor(FrameType::kBulkDone));
  ASSERT_TRUE(urgent->waitFor(FrameType::kPageData));
  DestinationCopy copy;
  for (std::uint64_t p = 0; p < 128; ++p) copy.has[p] = true;  // stale content
  copy.apply(framesOf(*bulk));
  EXPECT_EQ(copy.dropped, 128u);
  expectCopyEqualsMemory(copy);
  EXPECT_EQ(precopy()["stale_pages"], 128);
  EXPECT_EQ(metric("lazymig_precopy_source_rounds_total"), 0) << "no round without tracking";
  EXPECT_EQ(switches("no_write_tracking"), 1);
  EXPECT_EQ(metric("lazymig_precopy_source_stale_pages_sum"), 128);
  auto record = db_->getMigration("m1");
  ASSERT_TRUE(record && *record);
  auto saved = SavedMigration::fromJson((*record)->spec_json, "m1");
  ASSERT_TRUE(saved);
  EXPECT_TRUE(saved->runtime.live_source);
  EXPECT_TRUE(saved->runtime.precopy_switched) << "a later restart knows the memory is paused";
}

TEST_F(PrecopyMigrationTest, PrecopyOffWithALiveHandoverIsPurePostCopy) {
  start("off", /*live=*/true);
  auto urgent = channel(ChannelKind::kUrgent);
  urgent->send(transport::encodePageRequest({{5}}));
  ASSERT_TRUE(urgent->waitFor(FrameType::kPageData)) << "served at once, as before";
  auto bulk = channel(ChannelKind::kBulk);
  resume(*bulk);
  ASSERT_TRUE(bulk->waitFor(FrameType::kBulkDone));
  EXPECT_EQ(count(framesOf(*bulk), FrameType::kStalePages), 0u);
  EXPECT_EQ(precopy()["state"], "off");
  EXPECT_NE(precopy()["reason"].get<std::string>().find("precopy is off"), std::string::npos);
  auto paused = migration_->paused();
  ASSERT_FALSE(paused);
  EXPECT_NE(paused.error().message().find("is not a live pre-copy"), std::string::npos);
}

// Pre-copy asked of a source VMM that hands its memory over paused: nothing to copy early, and
// the destination, staging until it hears `last`, hears it first thing.
TEST_F(PrecopyMigrationTest, APausedHandoverSendsAnEmptyStaleSetFirst) {
  start("auto", /*live=*/false);
  auto bulk = channel(ChannelKind::kBulk);
  resume(*bulk);
  ASSERT_TRUE(bulk->waitFor(FrameType::kBulkDone));
  auto frames = framesOf(*bulk);
  ASSERT_GE(frames.size(), 3u);
  EXPECT_EQ(frames[1].type, FrameType::kStalePages) << "right after HelloOk";
  DestinationCopy copy;
  copy.apply(frames);
  EXPECT_EQ(copy.dropped, 0u);
  expectCopyEqualsMemory(copy);
  EXPECT_EQ(precopy()["state"], "switched");
  EXPECT_EQ(precopy()["switch_reason"], "paused_memory");
  auto paused = migration_->paused();
  ASSERT_FALSE(paused);
  EXPECT_NE(paused.error().message().find("is paused already"), std::string::npos);
}

TEST_F(PrecopyMigrationTest, PausedTwiceOrOnASnapshotIsAConflict) {
  start("rounds 2", /*live=*/true);
  auto bulk = channel(ChannelKind::kBulk);
  resume(*bulk);
  ASSERT_TRUE(migration_->paused()) << "allowed during any round";
  auto again = migration_->paused();
  ASSERT_FALSE(again);
  EXPECT_EQ(again.error().code, Errc::kState);
  EXPECT_NE(again.error().message().find("already switched"), std::string::npos);
  ASSERT_TRUE(bulk->waitFor(FrameType::kBulkDone));
  DestinationCopy copy;
  copy.apply(framesOf(*bulk));
  expectCopyEqualsMemory(copy);

  migration_->shutdown();
  migration_.reset();
  createMigration(/*with_memory=*/true);
  auto snapshot = migration_->paused();
  ASSERT_FALSE(snapshot);
  EXPECT_NE(snapshot.error().message().find("not a live pre-copy"), std::string::npos);
}

}  // namespace
}  // namespace lazymig::agent
