// The live source's test bench (issue 19), shared by the source's pre-copy tests: the source
// VMM (a memfd tracked write-protect by a real uffd), a guest writer thread, the stand-in
// destination's copy of what the bulk channel brought, and the SourceMigration fixture around
// them (real TLS, the real PeerListener, real RocksDB and Prometheus registry).
#pragma once
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

namespace lazymig::agent::precopy_test {

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
inline void roundTrip(TestDestination& channel) {
  channel.send(transport::encodePing(FrameType::kPing, {1}));
  ASSERT_TRUE(channel.waitFor(FrameType::kPong));
}

}  // namespace lazymig::agent::precopy_test
