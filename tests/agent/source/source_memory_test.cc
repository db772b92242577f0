// The source's view of guest memory handed over by a VMM: the bytes it serves, and whether
// runs of pages are prefaulted before they are read (only where the kernel has no
// fault-around for the memory, as for a guest_memfd).
#include "agent/source/source_memory.h"

#include <gtest/gtest.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>

#include "sys/kvm.h"
#include "sys/mapping.h"
#include "sys/memory_fd.h"

namespace lazymig::agent {
namespace {

constexpr std::uint64_t kPages = 64;
constexpr std::uint64_t kPage = 4096;

// Writes page i (except every fourth, left zero) with the byte i + 1, through a mapping of
// its own, then hands the fd over as a VMM would.
std::unique_ptr<SourceMemory> handOver(sys::UniqueFd fd) {
  auto map = sys::Mapping::ofFd(fd.get(), Bytes{kPages * kPage}, GuestOffset{0},
                                PROT_READ | PROT_WRITE, MAP_SHARED);
  EXPECT_TRUE(map) << map.error().message();
  if (!map) return nullptr;
  for (std::uint64_t p = 0; p < kPages; ++p) {
    if (p % 4 != 0) std::memset(map->data() + p * kPage, static_cast<int>(p + 1), kPage);
  }
  vmm::Handshake h;
  h.kind = vmm::HandshakeKind::kClassic;
  h.page_size = kPage;
  h.total_bytes = kPages * kPage;
  h.memory = std::move(fd);
  auto mem = SourceMemory::fromHandover(std::move(h));
  EXPECT_TRUE(mem) << mem.error().message();
  return mem ? std::move(*mem) : nullptr;
}

void expectServesWhatWasWritten(const SourceMemory& mem) {
  ASSERT_EQ(mem.pageCount(), kPages);
  mem.prefault(0, kPages);  // must not change a byte, whatever the memory
  for (std::uint64_t p = 0; p < kPages; ++p) {
    EXPECT_EQ(mem.isZero(p), p % 4 == 0) << p;
    auto page = mem.pages(p, 1);
    const auto want = static_cast<std::byte>(p % 4 == 0 ? 0 : p + 1);
    EXPECT_EQ(page.front(), want) << p;
    EXPECT_EQ(page.back(), want) << p;
  }
}

TEST(SourceMemory, MemfdIsServedAsWrittenAndNotPrefaulted) {
  auto fd = sys::createMemfd("source-memory-test", Bytes{kPages * kPage});
  ASSERT_TRUE(fd) << fd.error().message();
  auto mem = handOver(std::move(*fd));
  ASSERT_TRUE(mem);
  expectServesWhatWasWritten(*mem);
  EXPECT_FALSE(mem->prefaultHelps()) << "shmem maps 16 pages per fault; prefaulting is slower";
}

TEST(SourceMemory, GuestMemfdIsServedAsWrittenAndPrefaulted) {
  if (auto vm = sys::KvmVm::open(); !vm) {
    GTEST_SKIP() << "no guest_memfd without KVM: " << vm.error().message();
  }
  auto fd = sys::createMappableGuestMemfd(Bytes{kPages * kPage});
  ASSERT_TRUE(fd) << fd.error().message();
  auto mem = handOver(std::move(*fd));
  ASSERT_TRUE(mem);
  expectServesWhatWasWritten(*mem);
  EXPECT_TRUE(mem->prefaultHelps()) << "a guest_memfd maps one page per fault";
  EXPECT_EQ(mem->describe(), "guest_memfd from the VMM");
}

}  // namespace
}  // namespace lazymig::agent
