// The demo's huge page reservation is one at a time across processes: demos run side by side
// (ctest -j) must not count each other's raised pages as free, nor shrink the pool under each
// other's VMs when the first one ends.
#include "cli/huge_pages.h"

#include <fcntl.h>
#include <gtest/gtest.h>
#include <sys/file.h>

#include <cerrno>

#include "sys/memory_fd.h"
#include "sys/unique_fd.h"

namespace lazymig::cli {
namespace {

// What another demo would meet: can it take the reservation lock right now?
bool anotherDemoCouldTakeTheLock() {
  sys::UniqueFd fd(::open(kHugePageLockFile, O_RDWR | O_CREAT | O_CLOEXEC, 0666));
  EXPECT_TRUE(fd) << kHugePageLockFile;
  if (::flock(fd.get(), LOCK_EX | LOCK_NB) == 0) return true;
  EXPECT_EQ(errno, EWOULDBLOCK);
  return false;
}

TEST(HugePageReservation, IsHeldAgainstOtherDemosUntilItEnds) {
  auto pool = sys::defaultHugePagePool();
  if (!pool || pool->page_size.value != kHugePage) {
    GTEST_SKIP() << "no 2 MiB default huge page pool here";
  }
  {
    // Zero pages: nothing to raise, yet the reservation must still be exclusive, because the
    // pages it found free are the ones its VMs are about to map.
    auto held = HugePageReservation::ensureFree(0, false);
    ASSERT_TRUE(held) << held.error().message();
    EXPECT_FALSE(anotherDemoCouldTakeTheLock());
    HugePageReservation moved = std::move(*held);
    EXPECT_FALSE(anotherDemoCouldTakeTheLock()) << "a moved reservation keeps the lock";
  }
  EXPECT_TRUE(anotherDemoCouldTakeTheLock());
}

}  // namespace
}  // namespace lazymig::cli
