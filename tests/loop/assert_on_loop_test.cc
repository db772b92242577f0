// LAZYMIG_ASSERT_ON_LOOP: silent on the loop's thread, fatal elsewhere in debug builds.
#include "loop/assert_on_loop.h"

#include <gtest/gtest.h>

#include <future>

#include "loop/event_loop.h"

namespace lazymig::loop {
namespace {

TEST(AssertOnLoop, SilentOnTheLoopThread) {
  auto loop = EventLoop::start("assert-test");
  ASSERT_TRUE(loop.has_value());
  std::promise<void> ran;
  auto done = ran.get_future();
  ASSERT_TRUE((*loop)->post([&] {
    LAZYMIG_ASSERT_ON_LOOP(**loop);
    ran.set_value();
  }));
  done.wait();
}

TEST(AssertOnLoopDeathTest, FatalOffTheLoopThreadInDebugBuilds) {
  GTEST_FLAG_SET(death_test_style, "threadsafe");
  // Built with NDEBUG the statement runs and does nothing; without, the child process dies.
  EXPECT_DEBUG_DEATH(
      {
        auto loop = EventLoop::start("assert-test");
        if (loop) LAZYMIG_ASSERT_ON_LOOP(**loop);
      },
      "loop-only method was called off its loop's thread");
}

}  // namespace
}  // namespace lazymig::loop
