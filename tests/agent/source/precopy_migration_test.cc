// A live source (issue 19): SourceMigration handed a running guest's memory with its real
// write-protect uffd and pagemap (WP_ASYNC, PAGEMAP_SCAN), serving a stand-in destination over
// real TLS through the real PeerListener, while a writer thread races every round. The stand-in
// applies what the bulk channel brings as the contract says a destination does: pages before
// the StalePages frame with `last` to a staging copy, StalePages drop from it, pages after it
// are post-copy. After the switch its copy must equal the paused memory page for page.
#include "tests/agent/source/precopy_peer.h"

namespace lazymig::agent {
namespace {

using namespace precopy_test;

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
