// Run-time capability detection on this kernel, and the path chosen (or refused) for each
// kind of memory a VMM hands over.
#include "agent/destination/population/memory_capabilities.h"

#include <gtest/gtest.h>
#include <unistd.h>

#include "sys/event_fd.h"
#include "sys/kvm.h"
#include "sys/memory_fd.h"

namespace lazymig::agent {
namespace {

vmm::Handshake handshake(vmm::HandshakeKind kind, sys::UniqueFd memory, std::uint64_t page_size) {
  vmm::Handshake h;
  h.kind = kind;
  h.page_size = page_size;
  h.total_bytes = page_size;
  h.memory = std::move(memory);
  return h;
}

TEST(MemoryCapabilities, ProbedOnThisKernel) {
  const auto& caps = kernelCapabilities();
  // Linux >= 5.13 has minor faults on shmem; the machines we run on are 6.x.
  EXPECT_EQ(caps.uffd_minor_shmem.answer, Capability::Answer::kYes) << caps.uffd_minor_shmem.detail;
  // /dev/kvm may exist on a host whose KVM cannot create a VM: ask KVM, not the device.
  if (!sys::KvmVm::open()) {
    EXPECT_EQ(caps.uffd_on_guest_memfd.answer, Capability::Answer::kUnknown);
    EXPECT_EQ(caps.uffd_on_guest_memfd.detail.rfind("not probed", 0), 0u)
        << caps.uffd_on_guest_memfd.detail;
  } else {
    EXPECT_NE(caps.guest_memfd_mmap.answer, Capability::Answer::kUnknown)
        << caps.guest_memfd_mmap.detail;
  }
  auto j = caps.toJson();
  for (const char* k : {"uffd_minor_shmem", "uffd_minor_hugetlbfs", "guest_memfd_mmap",
                        "guest_memfd_write", "uffd_on_guest_memfd"}) {
    EXPECT_TRUE(j.contains(k)) << k;
  }
}

TEST(MemoryCapabilities, EachHandshakeGetsItsPath) {
  const auto& caps = kernelCapabilities();
  auto classic = choosePopulation(handshake(vmm::HandshakeKind::kClassic, {}, 4096), caps);
  ASSERT_TRUE(classic);
  EXPECT_EQ(classic->path, PopulationPath::kUffdCopy);

  auto minor = choosePopulation(
      handshake(vmm::HandshakeKind::kSharedMinor, *sys::createMemfd("m", Bytes{4096}), 4096), caps);
  ASSERT_TRUE(minor) << minor.error().message();
  EXPECT_EQ(minor->path, PopulationPath::kShmemMinorContinue);
  EXPECT_EQ(minor->backing, "memfd");

  auto gmem = choosePopulation(
      handshake(vmm::HandshakeKind::kGuestMemfd, *sys::createMemfd("g", Bytes{4096}), 4096), caps);
  ASSERT_TRUE(gmem) << gmem.error().message();
  EXPECT_EQ(gmem->path, PopulationPath::kGuestMemfd);
}

TEST(MemoryCapabilities, MissingKernelFeatureIsNamedInTheRefusal) {
  MemoryCapabilities caps = kernelCapabilities();
  caps.uffd_minor_shmem = {Capability::Answer::kNo,
                           "this kernel lacks UFFD_FEATURE_MINOR_SHMEM (UFFDIO_API: EINVAL)"};
  auto r = choosePopulation(
      handshake(vmm::HandshakeKind::kSharedMinor, *sys::createMemfd("m", Bytes{4096}), 4096), caps);
  ASSERT_FALSE(r);
  EXPECT_EQ(r.error().code, Errc::kUnsupported);
  EXPECT_NE(r.error().message().find("UFFD_FEATURE_MINOR_SHMEM"), std::string::npos)
      << r.error().message();
}

TEST(MemoryCapabilities, GuestMemfdWithHugePagesIsRefused) {
  auto r = choosePopulation(
      handshake(vmm::HandshakeKind::kGuestMemfd, *sys::createMemfd("g", Bytes{4096}), 2 << 20),
      kernelCapabilities());
  ASSERT_FALSE(r);
  EXPECT_NE(r.error().message().find("page_size"), std::string::npos) << r.error().message();
}

TEST(GuestMemoryView, RefusesABitmapTooSmallForThePages) {
  auto memory = *sys::createMemfd("g", Bytes{128 * 4096});
  auto bitmap = *sys::createMemfd("b", Bytes{8});  // 64 bits for 128 pages
  auto v = GuestMemoryView::map(memory, 128 * 4096, 4096, &bitmap);
  ASSERT_FALSE(v);
  EXPECT_NE(v.error().message().find("userfault bitmap"), std::string::npos) << v.error().message();
}

}  // namespace
}  // namespace lazymig::agent
