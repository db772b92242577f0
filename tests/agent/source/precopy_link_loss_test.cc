// A bulk channel lost during the rounds with a page's newer copy in flight (issue 19, found by
// PrecopyResilience.LinkCutDuringTheRoundsEndsVerified between real agents): the destination
// still holds the copy an earlier round sent, and its Resume says it has the page -- which
// cannot tell the two copies apart. The source must send the page again before the switch, or
// name it stale at the switch; otherwise the destination installs the older copy.
#include "tests/agent/source/precopy_peer.h"

namespace lazymig::agent {
namespace {

using namespace precopy_test;

// The indices of the PageData frames that carry `page`, in the order they came.
std::vector<std::size_t> framesCarrying(const std::vector<Frame>& frames, std::uint64_t page) {
  std::vector<std::size_t> out;
  for (std::size_t i = 0; i < frames.size(); ++i) {
    if (frames[i].type != FrameType::kPageData) continue;
    auto d = transport::decodePageData(frames[i].payload, {kPage, kPages});
    if (d && d->first_page <= page && page < d->first_page + d->count) out.push_back(i);
  }
  return out;
}

class PrecopyLinkLoss : public PrecopyMigrationTest {
 protected:
  static constexpr std::uint64_t kWritten = 5;  // not a hole (every fourth page is)

  // Round 1 sends every page; the guest then writes page kWritten once, round 2 sends it again,
  // and the link breaks with that second copy lost: `copy` is what the destination holds
  // (round 1's copy of the page, as current as it looks).
  void loseTheSecondCopy(DestinationCopy& copy) {
    config_.migration.bulk_rate_limit_mib_s = 1;
    config_.migration.bulk_batch_pages = 4;
    start("rounds 1000", /*live=*/true);
    bulk_ = channel(ChannelKind::kBulk);
    resume(*bulk_);
    ASSERT_TRUE(bulk_->waitUntil(
        [](const std::vector<Frame>& f) { return !framesCarrying(f, kWritten).empty(); }));
    vmm_.word(kWritten, 1).store(555);  // after round 1's scan and read: round 2 resends it
    ASSERT_TRUE(bulk_->waitUntil([](const std::vector<Frame>& f) {
      return framesCarrying(f, kWritten).size() >= 2;
    })) << precopy();
    const auto frames = framesOf(*bulk_);
    const std::size_t lost = framesCarrying(frames, kWritten)[1];
    copy.apply({frames.begin(), frames.begin() + static_cast<std::ptrdiff_t>(lost)});
    ASSERT_TRUE(copy.has[kWritten]) << "round 1's copy arrived";
    bulk_.reset();  // the link breaks; the frame with the second copy never arrived
  }

  std::unique_ptr<TestDestination> bulk_;
};

// The destination reconnects before the pause: the page goes again in a later round, or is
// stale at the switch.
TEST_F(PrecopyLinkLoss, ACopyLostBeforeTheSwitchIsSentAgainOrStale) {
  DestinationCopy copy;
  loseTheSecondCopy(copy);
  bulk_ = channel(ChannelKind::kBulk);
  bulk_->send(copy.resume());
  roundTrip(*bulk_);
  ASSERT_TRUE(migration_->paused());
  ASSERT_TRUE(bulk_->waitFor(FrameType::kBulkDone));
  copy.apply(framesOf(*bulk_));
  expectCopyEqualsMemory(copy);
}

// The pause comes while the link is down: the channel after the switch names the page stale
// (the destination drops its staged copy) and post-copy sends it.
TEST_F(PrecopyLinkLoss, ACopyLostWithTheLinkDownAtThePauseIsStale) {
  DestinationCopy copy;
  loseTheSecondCopy(copy);
  ASSERT_TRUE(migration_->paused());
  bulk_ = channel(ChannelKind::kBulk);
  bulk_->send(copy.resume());
  ASSERT_TRUE(bulk_->waitFor(FrameType::kBulkDone));
  copy.apply(framesOf(*bulk_));
  expectCopyEqualsMemory(copy);
  EXPECT_EQ(copy.dropped, 1u) << precopy();
}

}  // namespace
}  // namespace lazymig::agent
