// A thread's nice value is its own: setting it on one thread leaves the others as they were
// (the destination lowers only its fault thread's).
#include "sys/thread_priority.h"

#include <gtest/gtest.h>

#include <thread>

namespace lazymig::sys {
namespace {

TEST(ThreadPriority, NiceIsSetOnTheCallingThreadAlone) {
  const int before = thisThreadNice();
  const int wanted = before < 19 ? before + 1 : before - 1;  // raising needs no privilege
  int seen = 0;
  Status set;
  std::thread([&] {
    set = setThisThreadNice(wanted);
    seen = thisThreadNice();
  }).join();
  ASSERT_TRUE(set) << set.error().message();
  EXPECT_EQ(seen, wanted);
  EXPECT_EQ(thisThreadNice(), before);
}

TEST(ThreadPriority, AnOutOfReachNiceIsAnErrorNamingTheCall) {
  if (mayUseNice(-20)) GTEST_SKIP() << "this process may use any nice value (CAP_SYS_NICE)";
  Status set;
  std::thread([&] { set = setThisThreadNice(-20); }).join();
  ASSERT_FALSE(set);
  EXPECT_NE(set.error().message().find("setpriority"), std::string::npos);
}

}  // namespace
}  // namespace lazymig::sys
