#include "sys/uffd.h"

#include <fcntl.h>
#include <gtest/gtest.h>
#include <sys/ioctl.h>
#include <sys/syscall.h>
#include <unistd.h>

#include <array>
#include <cstring>
#include <thread>

#include "sys/mapping.h"
#include "sys/memory_fd.h"

namespace lazymig::sys {

constexpr std::uint64_t kPage = 4096;

TEST(Uffd, CopyIsAtomicIfAbsent) {
  auto mem = Mapping::anonymous(Bytes{4 * kPage});
  ASSERT_TRUE(mem);
  auto uffd = Uffd::open(UFFD_FEATURE_EVENT_REMOVE);
  ASSERT_TRUE(uffd) << uffd.error().message();
  auto ioctls = uffd->registerRange(mem->address(), mem->size(), RegisterMode::kMissing);
  ASSERT_TRUE(ioctls) << ioctls.error().message();
  EXPECT_TRUE(*ioctls & (1ull << _UFFDIO_COPY));

  std::vector<std::byte> a(kPage, std::byte{0xa}), b(kPage, std::byte{0xb});
  auto r = uffd->copy(mem->address(), a.data(), Bytes{kPage});
  ASSERT_TRUE(r);
  EXPECT_EQ(r->outcome, InstallOutcome::kInstalled);
  EXPECT_EQ(r->done.value, kPage);
  // A second install of the same page must not overwrite it.
  auto again = uffd->copy(mem->address(), b.data(), Bytes{kPage});
  ASSERT_TRUE(again);
  EXPECT_EQ(again->outcome, InstallOutcome::kAlreadyPresent);
  EXPECT_EQ(mem->data()[0], std::byte{0xa});
}

TEST(Uffd, MultiPageCopyStopsAtPresentPageAndReportsBytesDone) {
  auto mem = Mapping::anonymous(Bytes{4 * kPage});
  auto uffd = Uffd::open(0);
  ASSERT_TRUE(uffd);
  ASSERT_TRUE(uffd->registerRange(mem->address(), mem->size(), RegisterMode::kMissing));
  std::vector<std::byte> src(4 * kPage, std::byte{0x7});
  ASSERT_TRUE(uffd->copy(HostAddr{mem->address().value + 2 * kPage}, src.data(), Bytes{kPage}));
  auto r = uffd->copy(mem->address(), src.data(), Bytes{4 * kPage});
  ASSERT_TRUE(r);
  EXPECT_EQ(r->outcome, InstallOutcome::kInstalled);
  EXPECT_EQ(r->done.value, 2 * kPage);
  auto z = uffd->zeroPage(HostAddr{mem->address().value + 3 * kPage}, Bytes{kPage});
  ASSERT_TRUE(z);
  EXPECT_EQ(z->outcome, InstallOutcome::kInstalled);
}

TEST(Uffd, FaultIsReadAndWokenByCopy) {
  auto mem = Mapping::anonymous(Bytes{kPage});
  auto uffd = Uffd::open(0);
  ASSERT_TRUE(uffd);
  ASSERT_TRUE(uffd->registerRange(mem->address(), mem->size(), RegisterMode::kMissing));
  std::byte seen{};
  std::thread vcpu([&] { seen = mem->data()[100]; });
  uffd_msg msgs[4];
  std::size_t n = 0;
  while (n == 0) {
    auto r = uffd->readEvents(msgs);
    ASSERT_TRUE(r);
    n = *r;
  }
  EXPECT_EQ(msgs[0].event, UFFD_EVENT_PAGEFAULT);
  EXPECT_EQ(msgs[0].arg.pagefault.address & ~(kPage - 1), mem->address().value);
  std::vector<std::byte> page(kPage, std::byte{0x42});
  ASSERT_TRUE(uffd->copy(mem->address(), page.data(), Bytes{kPage}));
  vcpu.join();
  EXPECT_EQ(seen, std::byte{0x42});
}

TEST(Uffd, SharedMemoryMissingMode) {
  auto fd = createMemfd("t", Bytes{2 * kPage});
  ASSERT_TRUE(fd);
  auto mem = Mapping::ofFd(fd->get(), Bytes{2 * kPage}, GuestOffset{0}, PROT_READ | PROT_WRITE,
                           MAP_SHARED);
  ASSERT_TRUE(mem);
  auto uffd = Uffd::open(UFFD_FEATURE_MISSING_SHMEM);
  ASSERT_TRUE(uffd) << uffd.error().message();
  ASSERT_TRUE(uffd->registerRange(mem->address(), mem->size(), RegisterMode::kMissing));
  std::vector<std::byte> page(kPage, std::byte{0x11});
  auto r = uffd->copy(mem->address(), page.data(), Bytes{kPage});
  ASSERT_TRUE(r) << r.error().message();
  EXPECT_EQ(r->outcome, InstallOutcome::kInstalled);
  EXPECT_EQ(uffd->copy(mem->address(), page.data(), Bytes{kPage})->outcome,
            InstallOutcome::kAlreadyPresent);
}

TEST(Uffd, ErrorsNameTheIoctlAndRange) {
  auto uffd = Uffd::open(0);
  ASSERT_TRUE(uffd);
  auto r = uffd->registerRange(HostAddr{0x1000}, Bytes{123}, RegisterMode::kMissing);
  ASSERT_FALSE(r);
  EXPECT_NE(r.error().message().find("UFFDIO_REGISTER"), std::string::npos);
  EXPECT_NE(r.error().message().find("0x1000+123"), std::string::npos);
}

// A VMM may create its uffd blocking (legal). Adopting it makes it non-blocking, so that a read
// with no event queued returns at once instead of putting the fault thread to sleep.
TEST(Uffd, AdoptMakesABlockingUffdNonBlocking) {
  UniqueFd raw(static_cast<int>(::syscall(SYS_userfaultfd, O_CLOEXEC)));
  ASSERT_TRUE(raw.valid()) << std::strerror(errno);
  uffdio_api api{.api = UFFD_API, .features = 0, .ioctls = 0};
  ASSERT_EQ(::ioctl(raw.get(), UFFDIO_API, &api), 0);
  ASSERT_FALSE(::fcntl(raw.get(), F_GETFL) & O_NONBLOCK);
  auto uffd = Uffd::adopt(std::move(raw));
  ASSERT_TRUE(uffd) << uffd.error().message();
  ASSERT_TRUE(::fcntl(uffd->pollFd(), F_GETFL) & O_NONBLOCK) << "a read would block forever";
  std::array<uffd_msg, 4> msgs;
  auto n = uffd->readEvents(msgs);
  ASSERT_TRUE(n) << n.error().message();
  EXPECT_EQ(*n, 0u);
}

TEST(Uffd, AdoptRefusesWhatIsNotAUffdNamingIt) {
  auto refused = [](UniqueFd fd) {
    auto u = Uffd::adopt(std::move(fd));
    EXPECT_FALSE(u);
    return u ? std::string() : u.error().message();
  };
  auto null = refused(UniqueFd(::open("/dev/null", O_RDWR | O_CLOEXEC)));
  EXPECT_NE(null.find("is not a userfaultfd (it is /dev/null)"), std::string::npos) << null;
  int p[2];
  ASSERT_EQ(::pipe2(p, O_CLOEXEC), 0);
  UniqueFd w(p[1]);
  auto pipe = refused(UniqueFd(p[0]));
  EXPECT_NE(pipe.find("(it is pipe:["), std::string::npos) << pipe;
  auto memfd = createMemfd("not-a-uffd", Bytes{kPage});
  ASSERT_TRUE(memfd);
  auto mem = refused(std::move(*memfd));
  EXPECT_NE(mem.find("/memfd:not-a-uffd"), std::string::npos) << mem;
  EXPECT_TRUE(Uffd::isUserfaultfd(Uffd::open(0)->fd()));
}

}  // namespace lazymig::sys
