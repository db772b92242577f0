// The source's urgent channel on its own thread: a demand request (and the ending's Complete)
// is answered while the peer loop, which keeps the bulk stream, is held busy -- as a long bulk
// batch or a lost CPU holds it -- and every teardown (cancel, a cut link, shutdown with or
// without the peer loop, a channel still on its way to its thread) closes the channel cleanly
// with requests in flight.
#include <cstring>
#include <future>

#include "agent/source/source_migration.h"
#include "sys/thread_priority.h"
#include "tests/agent/source/source_migration_fixture.h"

namespace lazymig::agent {
namespace {

using source_test::TestDestination;
using transport::ChannelKind;
using transport::FrameType;
using namespace std::chrono_literals;

class SourceUrgentTest : public source_test::SourceMigrationFixture {
 protected:
  // The page a PageData frame carries, checked against the snapshot (every fourth page zero,
  // the others their index).
  static void expectPage(const TestDestination::Frame& frame, std::uint64_t page) {
    auto data = transport::decodePageData(frame.payload, {4096, kPages});
    ASSERT_TRUE(data) << data.error().message();
    EXPECT_EQ(data->first_page, page);
    std::uint64_t first_word = 0;
    std::memcpy(&first_word, data->data.data(), sizeof first_word);
    EXPECT_EQ(first_word, page);
  }
  // Stops the peer loop as the agent's stop does last, after what the test itself keeps there.
  void stopPeerLoop() {
    runOnLoop(*peer_loop_, [&] {
      accepted_.clear();
      server_.reset();
    });
    peer_loop_->stop();
  }
  // `count` requests of one page each in one write, as a destination with many faulting vCPUs
  // sends them.
  static std::string manyRequests(int count) {
    std::string out;
    for (int i = 0; i < count; ++i) {
      out += transport::encodePageRequest({{static_cast<std::uint64_t>(1 + 4 * (i % 60))}});
    }
    return out;
  }
};

// Holds a loop busy from the moment it starts until it is destroyed.
class BusyLoop {
 public:
  explicit BusyLoop(transport::EventLoop& loop) {
    std::promise<void> started;
    loop.post([&started, released = release_.get_future().share()] {
      started.set_value();
      released.wait();
    });
    started.get_future().wait();
  }
  ~BusyLoop() { release_.set_value(); }

 private:
  std::promise<void> release_;
};

// The guarantee of the urgent thread: with the peer loop held busy before the request is even
// sent, the reply still comes (on a shared loop it waits until the loop is let go).
TEST_F(SourceUrgentTest, AnswersDemandWhileThePeerLoopIsBusy) {
  createMigration();
  auto urgent = attached(ChannelKind::kUrgent);
  BusyLoop busy(*peer_loop_);
  urgent->send(transport::encodePageRequest({{9}}));
  auto reply = urgent->waitFor(FrameType::kPageData);
  ASSERT_TRUE(reply);
  expectPage(*reply, 9);
  EXPECT_EQ(progress()["served_demand_pages"], 1);
}

// migration.source_urgent_thread_nice reaches the urgent thread alone: the status shows the
// value it runs at (or why it could not be had), and the demand reply comes from it.
TEST_F(SourceUrgentTest, TheUrgentThreadRunsAtItsConfiguredNice) {
  config_.migration.source_urgent_thread_nice = -5;
  createMigration();
  auto urgent = attached(ChannelKind::kUrgent);
  urgent->send(transport::encodePageRequest({{2}}));
  ASSERT_TRUE(urgent->waitFor(FrameType::kPageData));
  auto status = migration_->toJson();
  if (sys::mayUseNice(-5)) {
    EXPECT_EQ(status["urgent_thread"]["nice"], -5) << status.dump();
  } else {
    EXPECT_TRUE(status["urgent_thread"].contains("error")) << status.dump();
  }
  int peer_nice = 99;
  runOnLoop(*peer_loop_, [&] { peer_nice = sys::thisThreadNice(); });
  EXPECT_EQ(peer_nice, sys::thisThreadNice()) << "the peer loop keeps the agent's own nice";
}

// The ending too: Complete is persisted and acknowledged from the urgent thread while the peer
// loop is busy; the channels close and the memory goes once it is free again.
TEST_F(SourceUrgentTest, AcknowledgesCompleteWhileThePeerLoopIsBusy) {
  createMigration();
  auto urgent = attached(ChannelKind::kUrgent);
  {
    BusyLoop busy(*peer_loop_);
    urgent->send(transport::encodeComplete({kPages}));
    EXPECT_TRUE(urgent->waitFor(FrameType::kCompleteAck));
    EXPECT_EQ(migration_->state(), MigrationState::kCompleted);
  }
  EXPECT_TRUE(urgent->waitClosed());
  EXPECT_TRUE(eventually([&] { return migration_->toJson()["memory_released"] == true; }));
}

// A cancel while the urgent thread is answering a burst of requests: the channel closes, the
// migration is cancelled, and a destination that comes back is refused.
TEST_F(SourceUrgentTest, CancelWithRequestsInFlightClosesTheChannel) {
  createMigration();
  auto urgent = attached(ChannelKind::kUrgent);
  urgent->send(manyRequests(500));
  ASSERT_TRUE(urgent->waitFor(FrameType::kPageData));
  ASSERT_TRUE(migration_->cancel(true));
  EXPECT_EQ(migration_->state(), MigrationState::kCancelled);
  EXPECT_TRUE(urgent->waitClosed());
  auto [again, conn] = connect();
  auto refused = attach(std::move(conn), again->hello(ChannelKind::kUrgent, kBytes));
  ASSERT_TRUE(refused);
  EXPECT_EQ(refused->reason, HelloRefusalReason::kState);
}

// The link cut with requests in flight: the next urgent channel replaces it and is served.
TEST_F(SourceUrgentTest, ALinkCutWithRequestsInFlightIsReplacedByTheNextChannel) {
  createMigration();
  {
    auto cut = attached(ChannelKind::kUrgent);
    cut->send(manyRequests(500));
    ASSERT_TRUE(cut->waitFor(FrameType::kPageData));
  }  // closed here, replies still coming
  auto urgent = attached(ChannelKind::kUrgent);
  urgent->send(transport::encodePageRequest({{13}}));
  auto reply = urgent->waitFor(FrameType::kPageData);
  ASSERT_TRUE(reply);
  expectPage(*reply, 13);
}

// The agent's stop: every migration shut down with requests in flight, the peer loop after.
TEST_F(SourceUrgentTest, ShutdownWithRequestsInFlightClosesTheChannel) {
  createMigration();
  auto urgent = attached(ChannelKind::kUrgent);
  urgent->send(manyRequests(500));
  ASSERT_TRUE(urgent->waitFor(FrameType::kPageData));
  migration_->shutdown();
  EXPECT_TRUE(urgent->waitClosed());
  stopPeerLoop();
}

// The peer loop stopped first (what the urgent thread posts to it is dropped), then the
// shutdown: the urgent thread still closes its channel.
TEST_F(SourceUrgentTest, ShutdownAfterThePeerLoopStoppedClosesTheChannel) {
  createMigration();
  auto urgent = attached(ChannelKind::kUrgent);
  urgent->send(manyRequests(500));
  ASSERT_TRUE(urgent->waitFor(FrameType::kPageData));
  stopPeerLoop();
  migration_->shutdown();
  EXPECT_TRUE(urgent->waitClosed());
}

// A channel whose Hello was accepted but which has not reached the urgent thread yet when the
// shutdown comes is closed, not served (and, under ASan, not left on a stopped loop).
TEST_F(SourceUrgentTest, AChannelStillMovingAtShutdownIsClosed) {
  createMigration();
  auto [urgent, conn] = connect();
  runOnLoop(*peer_loop_, [&] {
    EXPECT_FALSE(migration_->attach(std::move(conn), urgent->hello(ChannelKind::kUrgent, kBytes)));
    // Queued before the move can finish: the old bufferevent is finalized on a later turn.
    peer_loop_->post([this] { migration_->shutdown(); });
  });
  EXPECT_TRUE(urgent->waitClosed());
}

}  // namespace
}  // namespace lazymig::agent
