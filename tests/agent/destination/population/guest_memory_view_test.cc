// A VMM may truncate the guest memory file it handed over. Pages written through the agent's
// mapping past the new end are an error for that write, never a SIGBUS that would end every
// migration of the agent.
#include "agent/destination/population/guest_memory_view.h"

#include <gtest/gtest.h>
#include <unistd.h>

#include <vector>

#include "sys/memory_fd.h"

namespace lazymig::agent {
namespace {

constexpr std::uint64_t kPage = 4096;

TEST(GuestMemoryView, WritingPagesTheVmmTruncatedAwayIsAnErrorNotACrash) {
  auto fd = sys::createMemfd("guest", Bytes{8 * kPage});
  ASSERT_TRUE(fd) << fd.error().message();
  auto view = GuestMemoryView::map(*fd, 8 * kPage, kPage, nullptr, /*allow_pwrite=*/false);
  ASSERT_TRUE(view) << view.error().message();
  ASSERT_EQ(view->method(), WriteMethod::kMmap);
  std::vector<std::byte> page(2 * kPage, std::byte{7});
  ASSERT_TRUE(view->write(PageIndex{1}, 1, page.data()));
  ASSERT_EQ(::ftruncate(fd->get(), 2 * kPage), 0);
  EXPECT_TRUE(view->write(PageIndex{0}, 1, page.data()));
  auto past = view->write(PageIndex{4}, 2, page.data());
  ASSERT_FALSE(past);
  EXPECT_EQ(past.error().code, Errc::kClosed);
  EXPECT_NE(past.error().message().find("truncated"), std::string::npos) << past.error().message();
  EXPECT_FALSE(view->write(PageIndex{6}, 1, nullptr)) << "a zero run past the end, likewise";
}

}  // namespace
}  // namespace lazymig::agent
