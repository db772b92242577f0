#include "sys/kvm.h"

#include <gtest/gtest.h>
#include <unistd.h>

#include <cstring>

#include "sys/mapping.h"
#include "sys/memory_fd.h"

namespace lazymig::sys {
namespace {

constexpr std::uint64_t kSize = 4 * kMiB;

bool hostHasKvm() { return ::access("/dev/kvm", F_OK) == 0; }

TEST(Kvm, IsGuestMemfdIsFalseForOtherFds) {
  auto memfd = createMemfd("kvm-test", Bytes{kSize});
  ASSERT_TRUE(memfd) << memfd.error().message();
  EXPECT_FALSE(isGuestMemfd(memfd->get()));
  EXPECT_FALSE(isGuestMemfd(-1));
  EXPECT_FALSE(isGuestMemfd(1 << 20));  // not open
}

TEST(Kvm, OpenWithoutKvmSaysWhy) {
  if (hostHasKvm()) GTEST_SKIP() << "/dev/kvm exists here; KvmVm::open is tested below";
  auto vm = KvmVm::open();
  ASSERT_FALSE(vm);
  EXPECT_NE(vm.error().message().find("/dev/kvm"), std::string::npos) << vm.error().message();
  EXPECT_NE(vm.error().sys_errno, 0);
}

TEST(Kvm, GuestMemfdMapsSharedReadWrite) {
  auto vm = KvmVm::open();
  if (!hostHasKvm()) {
    ASSERT_FALSE(vm);
    GTEST_SKIP() << "no /dev/kvm on this host (" << vm.error().message()
                 << "); a real guest_memfd cannot be created";
  }
  ASSERT_TRUE(vm) << vm.error().message();
  auto has_gmem = vm->checkExtension(kCapGuestMemfd);
  ASSERT_TRUE(has_gmem) << has_gmem.error().message();
  if (*has_gmem <= 0) GTEST_SKIP() << "KVM here has no guest_memfd (KVM_CAP_GUEST_MEMFD is 0)";
  auto flags = vm->checkExtension(kCapGuestMemfdFlags);
  ASSERT_TRUE(flags) << flags.error().message();
  const auto wanted = kGuestMemfdFlagMmap | kGuestMemfdFlagInitShared;
  if ((static_cast<std::uint64_t>(*flags) & wanted) != wanted) {
    GTEST_SKIP() << "KVM here cannot mmap a guest_memfd (KVM_CAP_GUEST_MEMFD_FLAGS is " << *flags
                 << ")";
  }

  auto gmem = vm->createGuestMemfd(Bytes{kSize}, wanted);
  ASSERT_TRUE(gmem) << gmem.error().message();
  EXPECT_TRUE(isGuestMemfd(gmem->get()));
  auto size = fileSize(gmem->get());
  ASSERT_TRUE(size) << size.error().message();
  EXPECT_EQ(size->value, kSize);

  auto map =
      Mapping::ofFd(gmem->get(), Bytes{kSize}, GuestOffset{0}, PROT_READ | PROT_WRITE, MAP_SHARED);
  ASSERT_TRUE(map) << map.error().message();
  for (std::uint64_t off = 0; off < kSize; off += 4096) {
    std::memset(map->data() + off, static_cast<int>((off / 4096) & 0xff), 4096);
  }
  // A second mapping of the same fd sees the same pages: they live in the guest_memfd.
  auto again = Mapping::ofFd(gmem->get(), Bytes{kSize}, GuestOffset{0}, PROT_READ, MAP_SHARED);
  ASSERT_TRUE(again) << again.error().message();
  for (std::uint64_t off = 0; off < kSize; off += 4096) {
    ASSERT_EQ(again->data()[off + 17], static_cast<std::byte>((off / 4096) & 0xff)) << off;
  }
}

}  // namespace
}  // namespace lazymig::sys
