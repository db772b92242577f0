// SourceMigration against a destination dialling it over real TLS on loopback: which Hellos it
// serves and why it refuses the others (typed), what it counts, the bulk stream's rate cap
// (in bytes against elapsed time, never a timed expectation), and its one teardown.
#include "agent/source/source_migration.h"

#include <fstream>

#include "tests/agent/source/source_migration_fixture.h"

namespace lazymig::agent {
namespace {

using source_test::TestDestination;
using transport::ChannelKind;
using transport::FrameType;
using Frame = TestDestination::Frame;
using namespace std::chrono_literals;

class SourceMigrationTest : public source_test::SourceMigrationFixture {};

// Everything the source sent on the wire from HelloOk on, as the destination received it.
std::uint64_t wireBytes(const std::vector<Frame>& frames) {
  std::uint64_t n = 0;
  for (const auto& f : frames) {
    if (f.type != FrameType::kHelloOk) n += f.payload.size() + transport::kHeaderSize;
  }
  return n;
}

TEST_F(SourceMigrationTest, AcceptsItsDestinationWithHelloOk) {
  createMigration();
  auto [client, conn] = connect();
  EXPECT_FALSE(attach(std::move(conn), client->hello(ChannelKind::kUrgent, kBytes)));
  auto ok = client->waitFor(FrameType::kHelloOk);
  ASSERT_TRUE(ok);
  auto hello_ok = transport::decodeHelloOk(ok->payload);
  ASSERT_TRUE(hello_ok);
  EXPECT_EQ(hello_ok->page_size, 4096u);
  EXPECT_EQ(hello_ok->memory_bytes, kBytes);
}

TEST_F(SourceMigrationTest, RefusesAnotherPeerIdentityAsIdentity) {
  createMigration();
  auto [client, conn] = connect(stranger_tls_);
  auto refused = attach(std::move(conn), client->hello(ChannelKind::kUrgent, kBytes));
  ASSERT_TRUE(refused);
  EXPECT_EQ(refused->reason, HelloRefusalReason::kIdentity);
  EXPECT_EQ(client->errorCode(), static_cast<std::uint16_t>(PeerErrorCode::kAuth));
  EXPECT_TRUE(client->waitClosed());
  EXPECT_EQ(refusals("identity"), 1);
}

TEST_F(SourceMigrationTest, RefusesAWrongTokenAsToken) {
  createMigration();
  auto [client, conn] = connect();
  auto refused = attach(std::move(conn), client->hello(ChannelKind::kBulk, kBytes,
                                                       "ffffffffffffffffffffffffffffffff"));
  ASSERT_TRUE(refused);
  EXPECT_EQ(refused->reason, HelloRefusalReason::kToken);
  EXPECT_EQ(client->errorCode(), static_cast<std::uint16_t>(PeerErrorCode::kAuth));
  EXPECT_EQ(refusals("token"), 1);
}

TEST_F(SourceMigrationTest, RefusesAnotherMemorySizeAsLayout) {
  createMigration();
  auto [client, conn] = connect();
  auto refused = attach(std::move(conn), client->hello(ChannelKind::kUrgent, 2 * kBytes));
  ASSERT_TRUE(refused);
  EXPECT_EQ(refused->reason, HelloRefusalReason::kLayout);
  EXPECT_NE(refused->message.find(std::to_string(2 * kBytes)), std::string::npos)
      << refused->message;
  EXPECT_EQ(client->errorCode(), static_cast<std::uint16_t>(PeerErrorCode::kLayout));
  EXPECT_EQ(refusals("layout"), 1);
}

// Issue 19: a pre-copy destination's bulk link before its VMM says neither page size nor size
// (both 0) and learns them from the HelloOk; an urgent Hello cannot (the decoder refuses it).
TEST_F(SourceMigrationTest, AnswersABulkHelloWithoutLayoutWithItsOwn) {
  createMigration();
  auto [client, conn] = connect();
  auto hello = client->hello(ChannelKind::kBulk, 0);
  hello.page_size = 0;
  EXPECT_FALSE(attach(std::move(conn), hello));
  auto ok = client->waitFor(FrameType::kHelloOk);
  ASSERT_TRUE(ok);
  auto hello_ok = transport::decodeHelloOk(ok->payload);
  ASSERT_TRUE(hello_ok);
  EXPECT_EQ(hello_ok->page_size, 4096u);
  EXPECT_EQ(hello_ok->memory_bytes, kBytes);
  EXPECT_EQ(refusals("layout"), 0);
}

TEST_F(SourceMigrationTest, ACancelledMigrationRefusesAsState) {
  createMigration();
  ASSERT_TRUE(migration_->cancel(true));
  auto [client, conn] = connect();
  auto refused = attach(std::move(conn), client->hello(ChannelKind::kUrgent, kBytes));
  ASSERT_TRUE(refused);
  EXPECT_EQ(refused->reason, HelloRefusalReason::kState);
  EXPECT_EQ(client->errorCode(), static_cast<std::uint16_t>(PeerErrorCode::kState));
}

// An authorised destination that comes before the memory waits (no answer, no refusal); the
// teardown closes it like any other channel.
TEST_F(SourceMigrationTest, ParksADestinationThatCameBeforeTheMemory) {
  createMigration(/*with_memory=*/false);
  auto [client, conn] = connect();
  EXPECT_FALSE(attach(std::move(conn), client->hello(ChannelKind::kUrgent, kBytes)));
  EXPECT_EQ(refusals("not_ready"), 0);
  migration_->shutdown();
  EXPECT_TRUE(client->waitClosed());
  EXPECT_FALSE(client->waitFor(FrameType::kHelloOk));
  EXPECT_FALSE(client->waitFor(FrameType::kError));
}

// Issue 13: the source counted received bytes on the urgent channel only, and none of its
// received bytes in the metrics. Every frame after the Hello exchange counts, both ways, on
// both channels, in the migration's stats and in lazymig_wire_bytes_total alike.
TEST_F(SourceMigrationTest, CountsBytesBothWaysOnBothChannelsInStatsAndMetrics) {
  createMigration();
  auto urgent = attached(ChannelKind::kUrgent);
  auto bulk = attached(ChannelKind::kBulk);

  const std::string request = transport::encodePageRequest({{5, 6}});
  urgent->send(request);
  ASSERT_TRUE(urgent->waitUntil([](const std::vector<Frame>& frames) {
    return std::count_if(frames.begin(), frames.end(),
                         [](const Frame& f) { return f.type == FrameType::kPageData; }) == 2;
  }));
  const std::string resume =
      transport::encodeResume({0, true, std::vector<std::uint64_t>(SourcePeer::kPages / 64, 0)});
  bulk->send(resume);
  ASSERT_TRUE(bulk->waitFor(FrameType::kBulkDone));
  const std::string ping = transport::encodePing(FrameType::kPing, {7});
  bulk->send(ping);
  urgent->send(ping);
  ASSERT_TRUE(bulk->waitFor(FrameType::kPong));
  ASSERT_TRUE(urgent->waitFor(FrameType::kPong));

  std::vector<Frame> urgent_frames, bulk_frames;
  urgent->waitUntil([&](const std::vector<Frame>& f) { return urgent_frames = f, true; });
  bulk->waitUntil([&](const std::vector<Frame>& f) { return bulk_frames = f, true; });
  const double urgent_sent = wireBytes(urgent_frames);
  const double bulk_sent = wireBytes(bulk_frames);
  const double urgent_received = request.size() + ping.size();
  const double bulk_received = resume.size() + ping.size();
  // Every non-zero page went on the bulk stream as page data (page 4 of every 4 is zero).
  EXPECT_GT(bulk_sent, (SourcePeer::kPages * 3 / 4 - 2) * 4096.0);
  EXPECT_EQ(metricValue("lazymig_wire_bytes_total", R"(channel="urgent",direction="sent")"),
            urgent_sent);
  EXPECT_EQ(metricValue("lazymig_wire_bytes_total", R"(channel="bulk",direction="sent")"),
            bulk_sent);
  EXPECT_EQ(metricValue("lazymig_wire_bytes_total", R"(channel="urgent",direction="received")"),
            urgent_received);
  EXPECT_EQ(metricValue("lazymig_wire_bytes_total", R"(channel="bulk",direction="received")"),
            bulk_received);
  EXPECT_EQ(progress()["bytes_sent"].get<double>(), urgent_sent + bulk_sent);
  EXPECT_EQ(progress()["bytes_received"].get<double>(), urgent_received + bulk_received);
  EXPECT_EQ(progress()["demand_faults"], 2);
}

// The bulk stream never runs ahead of bulk_rate_limit_mib_s: the bytes it sent are at most
// the bucket (a tenth of a second at the rate) plus the rate times the time since the Resume,
// plus the one batch that may overdraw it. Both bounds are in bytes against the time it took:
// a slow machine only sends less, and nothing here waits on a clock.
TEST_F(SourceMigrationTest, BulkStreamStaysUnderTheRateCapInBytes) {
  constexpr double kRate = 4 << 20;
  config_.migration.bulk_rate_limit_mib_s = 4;
  createMigration();
  auto bulk = attached(ChannelKind::kBulk);
  const auto resumed = std::chrono::steady_clock::now();
  bulk->send(
      transport::encodeResume({0, true, std::vector<std::uint64_t>(SourcePeer::kPages / 64, 0)}));
  ASSERT_TRUE(bulk->waitFor(FrameType::kBulkDone));
  const auto done = std::chrono::steady_clock::now();
  const double sent = metricValue("lazymig_wire_bytes_total", R"(channel="bulk",direction="sent")");
  const double batch = 64 * 4096 + 64;
  const double elapsed = std::chrono::duration<double>(done - resumed).count();
  EXPECT_GT(sent, SourcePeer::kPages * 3 / 4 * 4096.0);
  EXPECT_LE(sent, kRate / 10 + kRate * elapsed + batch)
      << "sent " << sent << " bytes in " << elapsed << " s";
  // And it did wait for tokens: a MiB at 4 MiB/s after a 0.4 MiB bucket is not all at once.
  EXPECT_GT(elapsed, (sent - kRate / 10 - batch) / kRate);
}

// One teardown: shutdown closes the urgent and bulk channels (each destination sees its
// link close), and a second shutdown, or a cancel after it, finds nothing left to do.
TEST_F(SourceMigrationTest, ShutdownClosesEveryChannelOnce) {
  createMigration();
  auto urgent = attached(ChannelKind::kUrgent);
  auto bulk = attached(ChannelKind::kBulk);
  migration_->shutdown();
  EXPECT_TRUE(urgent->waitClosed());
  EXPECT_TRUE(bulk->waitClosed());
  migration_->shutdown();
  EXPECT_TRUE(migration_->cancel(true));
  EXPECT_EQ(migration_->state(), MigrationState::kCancelled);
}

// The destination's Complete: persisted, acknowledged, channels closed, memory released.
TEST_F(SourceMigrationTest, CompleteIsAcknowledgedThenTheMemoryIsReleased) {
  createMigration();
  auto urgent = attached(ChannelKind::kUrgent);
  auto bulk = attached(ChannelKind::kBulk);
  urgent->send(transport::encodeComplete({SourcePeer::kPages}));
  EXPECT_TRUE(urgent->waitFor(FrameType::kCompleteAck));
  EXPECT_TRUE(urgent->waitClosed());
  EXPECT_TRUE(bulk->waitClosed());
  EXPECT_EQ(migration_->state(), MigrationState::kCompleted);
  runOnLoop(*peer_loop_, [] {});  // the release runs one loop iteration after the close
  runOnLoop(*peer_loop_, [] {});
  EXPECT_EQ(migration_->toJson()["memory_released"], true);
}

// A destination whose bulk channel reads nothing (its loop is blocked, so the source's bulk
// output fills its window and the socket behind it) still has its demand requests answered on
// the urgent channel: the bulk stream never holds up the one loop both channels share.
TEST_F(SourceMigrationTest, AnswersDemandWhileTheBulkPeerReadsNothing) {
  // 32 MiB: several times what the window and the loopback socket buffers hold.
  constexpr std::uint64_t kBigPages = 8192;
  {
    std::vector<std::uint64_t> page(4096 / 8);
    std::ofstream out(dir_ + "/guest.mem", std::ios::binary | std::ios::trunc);
    for (std::uint64_t p = 0; p < kBigPages; ++p) {
      std::fill(page.begin(), page.end(), p + 1);
      out.write(reinterpret_cast<const char*>(page.data()), 4096);
    }
  }
  createMigration();
  auto stuck_loop = std::move(*transport::EventLoop::start("test-stuck"));
  auto [bulk, bulk_conn] = [&] {
    auto client = std::make_unique<TestDestination>(*stuck_loop, destination_tls_, server_->port());
    source_test::waitOn(mu_, cv_, [&] { return !accepted_.empty(); });
    std::lock_guard lock(mu_);
    auto conn = std::move(accepted_.front());
    accepted_.erase(accepted_.begin());
    return std::make_pair(std::move(client), std::move(conn));
  }();
  ASSERT_FALSE(attach(std::move(bulk_conn), bulk->hello(ChannelKind::kBulk, kBigPages * 4096)));
  ASSERT_TRUE(bulk->waitFor(FrameType::kHelloOk));
  bulk->send(transport::encodeResume({0, true, std::vector<std::uint64_t>(kBigPages / 64, 0)}));
  // The bulk pages queued at the source, once at least `pages` are (or after 10 s).
  auto queuedAtLeast = [&](std::uint64_t pages) {
    std::uint64_t queued = 0;
    for (auto deadline = std::chrono::steady_clock::now() + 10s;
         std::chrono::steady_clock::now() < deadline;) {
      queued = progress()["served_bulk_pages"].get<std::uint64_t>();
      if (queued >= pages) break;
      std::this_thread::sleep_for(1ms);
    }
    return queued;
  };
  ASSERT_GT(queuedAtLeast(1), 0u);  // the Resume has left the peer
  // From here on the bulk peer's loop reads nothing until the test lets it go (at the latest
  // when this guard goes, before the bulk peer that needs its loop back).
  struct Blocked {
    std::promise<void> unblock;
    ~Blocked() { unblock.set_value(); }
  } blocked;
  stuck_loop->post([unblocked = blocked.unblock.get_future().share()] { unblocked.wait(); });
  // The source has queued what it can: the bulk stream is stuck behind the peer.
  const std::uint64_t window_pages = config_.migration.bulk_window_bytes_kib / 4;
  ASSERT_GE(queuedAtLeast(window_pages), window_pages);

  auto [urgent, urgent_conn] = connect();
  ASSERT_FALSE(
      attach(std::move(urgent_conn), urgent->hello(ChannelKind::kUrgent, kBigPages * 4096)));
  ASSERT_TRUE(urgent->waitFor(FrameType::kHelloOk));
  const std::uint64_t wanted = kBigPages - 1;  // the last page: the bulk stream is far from it
  urgent->send(transport::encodePageRequest({{wanted}}));
  auto reply = urgent->waitFor(FrameType::kPageData);
  ASSERT_TRUE(reply);
  auto data = transport::decodePageData(reply->payload, {4096, kBigPages});
  ASSERT_TRUE(data) << data.error().message();
  EXPECT_EQ(data->first_page, wanted);
  std::uint64_t first_word = 0;
  std::memcpy(&first_word, data->data.data(), sizeof first_word);
  EXPECT_EQ(first_word, wanted + 1);
  // Still stuck: the answer did not wait for the bulk peer.
  EXPECT_LT(progress()["served_bulk_pages"].get<std::uint64_t>(), kBigPages);
}

}  // namespace
}  // namespace lazymig::agent

namespace lazymig::agent {
namespace {

std::vector<FrameType> typesOf(const std::vector<Frame>& frames) {
  std::vector<FrameType> out;
  for (const auto& f : frames) {
    if (f.type != FrameType::kHelloOk) out.push_back(f.type);
  }
  return out;
}

// Protocol 1.2: a destination that asks (the Ping of kServeTimesWanted, which a 1.1 source
// answers as any Ping) gets each demand reply followed by the source's own times for that page;
// one that does not ask -- a 1.1 destination -- never sees the frame type.
TEST_F(SourceMigrationTest, FollowsEachDemandReplyWithServeTimesOnlyWhenAsked) {
  createMigration();
  auto urgent = attached(ChannelKind::kUrgent);
  urgent->send(transport::encodePageRequest({{5}}));
  urgent->send(transport::encodePing(FrameType::kPing, {1}));
  ASSERT_TRUE(urgent->waitFor(FrameType::kPong));
  std::vector<Frame> frames;
  urgent->waitUntil([&](const std::vector<Frame>& f) { return frames = f, true; });
  EXPECT_EQ(typesOf(frames), (std::vector<FrameType>{FrameType::kPageData, FrameType::kPong}));

  urgent->send(transport::encodePing(FrameType::kPing, {transport::kServeTimesWanted}));
  urgent->send(transport::encodePageRequest({{6, 7}}));
  ASSERT_TRUE(urgent->waitUntil([](const std::vector<Frame>& f) {
    return std::count_if(f.begin(), f.end(),
                         [](const Frame& x) { return x.type == FrameType::kServeTimes; }) == 2;
  }));
  urgent->waitUntil([&](const std::vector<Frame>& f) { return frames = f, true; });
  EXPECT_EQ(typesOf(frames),
            (std::vector<FrameType>{FrameType::kPageData, FrameType::kPong, FrameType::kPong,
                                    FrameType::kPageData, FrameType::kServeTimes,
                                    FrameType::kPageData, FrameType::kServeTimes}));
  // Each names the page of the reply before it; the second page waited for the first.
  const transport::Layout layout{4096, SourcePeer::kPages};
  std::vector<transport::ServeTimes> times;
  for (const auto& f : frames) {
    if (f.type != FrameType::kServeTimes) continue;
    auto t = transport::decodeServeTimes(f.payload, layout);
    ASSERT_TRUE(t) << t.error().message();
    times.push_back(*t);
  }
  ASSERT_EQ(times.size(), 2u);
  const auto& first = times[0];
  const auto& second = times[1];
  EXPECT_EQ(first.page, 6u);
  EXPECT_EQ(second.page, 7u);
  EXPECT_GE(second.waited_ns, first.waited_ns + first.served_ns);
}

}  // namespace
}  // namespace lazymig::agent
