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

// The guest_memfd userfault bitmap is the VMM's file too (KVM reads it): once truncated, each
// bit test and clear, and the status count, is an error.
TEST(GuestMemoryView, ATruncatedUserfaultBitmapIsAnErrorNotACrash) {
  auto fd = sys::createMemfd("guest", Bytes{64 * 1024 * kPage});
  ASSERT_TRUE(fd) << fd.error().message();
  auto bitmap = sys::createMemfd("bitmap", Bytes{8 * 1024});  // one bit a page, two 4 KiB pages
  ASSERT_TRUE(bitmap) << bitmap.error().message();
  auto view = GuestMemoryView::map(*fd, 64 * 1024 * kPage, kPage, &*bitmap);
  ASSERT_TRUE(view) << view.error().message();
  ASSERT_TRUE(view->bitsSet());
  EXPECT_EQ(*view->bitsSet(), 0u);
  ASSERT_EQ(::ftruncate(bitmap->get(), 4096), 0);  // pages 32768 and up lose their bits
  auto low = view->bitSet(PageIndex{3});
  ASSERT_TRUE(low) << low.error().message();
  EXPECT_FALSE(*low);
  EXPECT_TRUE(view->clearBit(PageIndex{3}));
  auto high = view->bitSet(PageIndex{40000});
  ASSERT_FALSE(high);
  EXPECT_NE(high.error().message().find("userfault bitmap"), std::string::npos)
      << high.error().message();
  EXPECT_FALSE(view->clearBit(PageIndex{40000}));
  EXPECT_FALSE(view->bitsSet());
}

}  // namespace
}  // namespace lazymig::agent
