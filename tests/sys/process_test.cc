#include "sys/process.h"

#include <gtest/gtest.h>
#include <unistd.h>

#include "sys/mapping.h"
#include "sys/uffd.h"

namespace lazymig::sys {

TEST(Process, FindsAndTakesOwnUffd) {
  auto uffd = Uffd::open(0);
  ASSERT_TRUE(uffd);
  auto fds =
      findFds(::getpid(), [](const std::string& t) { return t == "anon_inode:[userfaultfd]"; });
  ASSERT_TRUE(fds) << fds.error().message();
  ASSERT_FALSE(fds->empty());
  auto copy = takeFd(::getpid(), uffd->pollFd());
  ASSERT_TRUE(copy) << copy.error().message();
  EXPECT_NE(copy->get(), uffd->pollFd());
}

TEST(Process, PagemapShowsPresentPages) {
  auto mem = Mapping::anonymous(Bytes{8 * 4096});
  ASSERT_TRUE(mem);
  mem->data()[0] = std::byte{1};
  mem->data()[5 * 4096] = std::byte{1};
  auto bits = presentPages(::getpid(), mem->address(), 8, 4096);
  ASSERT_TRUE(bits) << bits.error().message();
  EXPECT_EQ(bits->size(), 8u);
  EXPECT_EQ(bits->words()[0], 0b100001u);
}

TEST(Process, MissingProcessIsAClearError) {
  auto r = findFds(999999999, [](const std::string&) { return true; });
  ASSERT_FALSE(r);
  EXPECT_NE(r.error().message().find("/proc/999999999/fd"), std::string::npos);
}

}  // namespace lazymig::sys
