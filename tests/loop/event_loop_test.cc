// The event loop's lifetime rules: stopping (and destroying) a loop from its own callback,
// work posted before a stop, timers as owning handles, and the base finalizers.
#include "loop/event_loop.h"

#include <event2/buffer.h>
#include <event2/bufferevent.h>
#include <event2/event.h>
#include <gtest/gtest.h>
#include <signal.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>
#include <cerrno>

#include <atomic>
#include <chrono>
#include <future>
#include <thread>

namespace lazymig::loop {
namespace {

using namespace std::chrono_literals;

std::unique_ptr<EventLoop> startLoop() {
  auto loop = EventLoop::start("loop-test");
  EXPECT_TRUE(loop.has_value());
  return std::move(*loop);
}

// A callback that stops and destroys its own loop (an owner torn down from its own event) must
// not free the base the loop thread is still running on: ASan reports a use after free, or the
// thread crashes, when stop() frees it there.
TEST(EventLoop, StopAndDestroyFromItsOwnCallback) {
  for (int round = 0; round < 20; ++round) {
    auto loop = startLoop();
    std::promise<void> ran_after;
    auto ran = ran_after.get_future();
    std::promise<void> destroyed;
    auto gone = destroyed.get_future();
    EventLoop* raw = loop.get();
    ASSERT_TRUE(raw->post([&, owned = std::shared_ptr<EventLoop>(std::move(loop))]() mutable {
      // Posted before the stop: must still run.
      raw->post([&] { ran_after.set_value(); });
      owned->stop();
      owned.reset();
      destroyed.set_value();
    }));
    ASSERT_EQ(gone.wait_for(5s), std::future_status::ready);
    ASSERT_EQ(ran.wait_for(5s), std::future_status::ready);
  }
}

// stop() right after start(): a break requested before the thread enters event_base_loop used
// to be cleared by it, and the join waited forever.
TEST(EventLoop, StopRightAfterStartEnds) {
  auto done = std::async(std::launch::async, [] {
    for (int i = 0; i < 200; ++i) startLoop()->stop();
  });
  ASSERT_EQ(done.wait_for(60s), std::future_status::ready) << "a stop() never returned";
}

TEST(EventLoop, WorkPostedBeforeStopRunsAndPostAfterStopIsRefused) {
  auto loop = startLoop();
  std::atomic<int> ran{0};
  std::promise<void> hold;
  auto held = hold.get_future().share();
  loop->post([held] { held.wait(); });  // keeps the thread busy while the rest queues up
  for (int i = 0; i < 10; ++i) loop->post([&] { ++ran; });
  std::thread stopper([&] { loop->stop(); });
  std::this_thread::yield();
  hold.set_value();
  stopper.join();
  EXPECT_EQ(ran.load(), 10);
  EXPECT_FALSE(loop->post([&] { ++ran; }));
}

TEST(EventLoop, TimerFiresUnlessItsHandleIsDestroyedOrCancelled) {
  auto loop = startLoop();
  std::promise<void> fired;
  auto f = fired.get_future();
  std::atomic<int> must_not_run{0};
  Timer kept = loop->schedule(20ms, [&] { fired.set_value(); });
  {
    Timer dropped = loop->schedule(1ms, [&] { ++must_not_run; });
  }
  Timer cancelled = loop->schedule(1ms, [&] { ++must_not_run; });
  cancelled.cancel();
  Timer moved_from = loop->schedule(1ms, [&] { ++must_not_run; });
  Timer replaced = std::move(moved_from);
  replaced = loop->schedule(30ms, [] {});  // move-assignment cancels the timer it held
  ASSERT_EQ(f.wait_for(5s), std::future_status::ready);
  // Every timer above was due before `kept` fired or is cancelled: none may have run.
  std::promise<void> later;
  auto l = later.get_future();
  Timer after = loop->schedule(50ms, [&] { later.set_value(); });
  ASSERT_EQ(l.wait_for(5s), std::future_status::ready);
  EXPECT_EQ(must_not_run.load(), 0);
}

TEST(EventLoop, TimerOnTheLoopThreadIsPendingUntilItFires) {
  auto loop = startLoop();
  Timer t;
  std::promise<bool> before, inside;
  auto b = before.get_future(), in = inside.get_future();
  loop->post([&] {
    t = loop->schedule(5ms, [&] { inside.set_value(t.pending()); });
    before.set_value(t.pending());
  });
  EXPECT_TRUE(b.get());
  EXPECT_FALSE(in.get());
  // The handle belongs to the loop thread here: let it go there, and wait for that.
  std::promise<void> cleared;
  loop->post([&] {
    t = Timer();
    cleared.set_value();
  });
  cleared.get_future().wait();
}

TEST(EventLoop, TimerHandleMayOutliveItsLoop) {
  auto loop = startLoop();
  Timer t = loop->schedule(10s, [] { ADD_FAILURE() << "fired after its loop stopped"; });
  loop.reset();
  t.cancel();  // no loop left: nothing to do, nothing to crash
}

// A poster handed to another thread posts while its loop runs, and refuses (dropping the work
// where it was posted) once the loop has stopped or is gone.
TEST(EventLoop, PosterPostsUntilItsLoopStopsAndMayOutliveIt) {
  auto loop = startLoop();
  LoopPoster poster = loop->poster();
  std::promise<bool> ran;
  ASSERT_TRUE(poster.post([&] { ran.set_value(loop->inLoopThread()); }));
  EXPECT_TRUE(ran.get_future().get());
  loop->stop();
  EXPECT_FALSE(poster.post([] { ADD_FAILURE() << "ran after its loop stopped"; }));
  loop.reset();
  EXPECT_FALSE(poster.post([] { ADD_FAILURE() << "ran after its loop was destroyed"; }));
  EXPECT_FALSE(LoopPoster().post([] { ADD_FAILURE() << "a default poster posts nowhere"; }));
}

event_base* g_finalized = nullptr;
void recordFinalized(event_base* base) { g_finalized = base; }

TEST(EventLoop, BaseFinalizersSeeTheBaseBeforeItIsFreed) {
  EventLoop::addBaseFinalizer(&recordFinalized);
  auto loop = startLoop();
  event_base* base = loop->base();
  loop->stop();
  EXPECT_EQ(g_finalized, base);
}

// What finish() frees on the stopping thread may write to a peer that has gone (a TLS
// connection's close_notify). That write must fail with EPIPE, not raise SIGPIPE, which would
// end this test binary (it does not ignore the signal, as the agent does); the thread's mask
// is left as it was, with nothing pending.
int g_gone_peer = -1;
event_base* g_writes_at_finish = nullptr;
int g_write_errno = 0;
void writeToAGonePeer(event_base* base) {
  if (base != g_writes_at_finish) return;
  g_write_errno = ::write(g_gone_peer, "x", 1) < 0 ? errno : 0;
}

TEST(EventLoop, StoppingFromAnotherThreadSurvivesAWriteToAGonePeer) {
  int fds[2];
  ASSERT_EQ(::socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, fds), 0);
  ::close(fds[1]);
  g_gone_peer = fds[0];
  EventLoop::addBaseFinalizer(&writeToAGonePeer);
  auto loop = startLoop();
  g_writes_at_finish = loop->base();
  loop->stop();
  EXPECT_EQ(g_write_errno, EPIPE);
  sigset_t mask, pending;
  pthread_sigmask(SIG_BLOCK, nullptr, &mask);
  sigpending(&pending);
  EXPECT_FALSE(sigismember(&mask, SIGPIPE));
  EXPECT_FALSE(sigismember(&pending, SIGPIPE));
  g_writes_at_finish = nullptr;
  ::close(fds[0]);
}

// A bufferevent freed in the loop's last turn while one of its deferred callbacks is queued
// (as an OpenSSL bufferevent's write callback is after every write) is freed with the base:
// that callback holds a reference, and event_base_free cancels it without dropping the
// reference, so the bufferevent (with an SSL session, for a TLS connection) leaked.
TEST(EventLoop, ABufferEventFreedWithADeferredCallbackQueuedIsFreedAtStop) {
  auto loop = startLoop();
  std::promise<void> freed;
  auto buffers_freed = freed.get_future();
  EventLoop* raw = loop.get();
  ASSERT_TRUE(raw->post([&, owned = std::shared_ptr<EventLoop>(std::move(loop))]() mutable {
    bufferevent* bev = bufferevent_socket_new(raw->base(), -1, BEV_OPT_DEFER_CALLBACKS);
    // Its output buffer calls this cleanup when it is freed, which is when the bufferevent is.
    static const char kByte = 'x';
    evbuffer_add_reference(
        bufferevent_get_output(bev), &kByte, 1,
        [](const void*, size_t, void* done) {
          static_cast<std::promise<void>*>(done)->set_value();
        },
        &freed);
    bufferevent_setcb(
        bev, nullptr, [](bufferevent*, void*) {}, nullptr, nullptr);
    bufferevent_trigger(bev, EV_WRITE, BEV_TRIG_IGNORE_WATERMARKS | BEV_TRIG_DEFER_CALLBACKS);
    bufferevent_free(bev);
    // Stopped from its own callback, the loop breaks before its next turn, which would have
    // run the deferred callback.
    owned->stop();
    owned.reset();
  }));
  EXPECT_EQ(buffers_freed.wait_for(5s), std::future_status::ready)
      << "the bufferevent was never freed";
}

std::chrono::nanoseconds callingThreadCpu() {
  timespec ts{};
  clock_gettime(CLOCK_THREAD_CPUTIME_ID, &ts);
  return std::chrono::seconds(ts.tv_sec) + std::chrono::nanoseconds(ts.tv_nsec);
}

// Burns `amount` of the calling thread's own CPU time.
void spinFor(std::chrono::nanoseconds amount) {
  auto end = callingThreadCpu() + amount;
  while (callingThreadCpu() < end) {
  }
}

// The loop's CPU clock is its thread's: work run on the loop adds to it, work elsewhere in the
// process does not, and the total outlives the thread.
TEST(EventLoop, CpuTimeIsTheLoopThreadsOwn) {
  auto loop = startLoop();
  const auto at_start = loop->cpuTime();

  // Another thread of the process works while the loop sleeps in epoll: a process-wide clock
  // would grow by the whole spin.
  spinFor(100ms);
  const auto after_idle = loop->cpuTime();
  EXPECT_LT(after_idle - at_start, 50ms) << "the loop's clock counted another thread's work";

  std::promise<void> spun;
  loop->post([&] {
    spinFor(100ms);
    spun.set_value();
  });
  ASSERT_EQ(spun.get_future().wait_for(30s), std::future_status::ready);
  const auto after_work = loop->cpuTime();
  EXPECT_GE(after_work - after_idle, 100ms) << "the loop's own work is missing from its clock";

  const CpuClock clock = loop->cpuClock();
  loop->stop();
  const auto after_stop = loop->cpuTime();
  EXPECT_GE(after_stop, after_work) << "the total was lost when the thread ended";
  EXPECT_EQ(loop->cpuTime(), after_stop) << "a stopped loop's clock must stand still";
  loop.reset();
  EXPECT_EQ(clock.read(), after_stop) << "the clock must outlive its loop";
  EXPECT_EQ(CpuClock{}.read(), 0ns);
}

}  // namespace
}  // namespace lazymig::loop
