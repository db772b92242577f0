// The source handover over a real socket with real fds: the paused VM's memory alone, and the
// live source's three (memory, write-protect uffd, pagemap), each checked for what it is.
#include "vmm/source_handover.h"

#include <fcntl.h>
#include <gtest/gtest.h>
#include <sys/socket.h>

#include "sys/mapping.h"
#include "sys/memory_fd.h"
#include "sys/unix_socket.h"
#include "sys/write_tracker.h"

namespace lazymig::vmm {
namespace {

constexpr std::uint64_t kBytes = 16 * 4096;

struct LiveVmm {
  sys::UniqueFd memory;
  sys::Mapping mapping;
  sys::WriteTracker tracker;
};

LiveVmm liveVmm() {
  auto memory = sys::createMemfd("source-handover-test", Bytes{kBytes});
  EXPECT_TRUE(memory);
  auto mapping = sys::Mapping::ofFd(memory->get(), Bytes{kBytes}, GuestOffset{0},
                                    PROT_READ | PROT_WRITE, MAP_SHARED);
  EXPECT_TRUE(mapping);
  auto tracker =
      sys::WriteTracker::trackOwnMemory({{mapping->address(), mapping->size()}}, Bytes{4096});
  EXPECT_TRUE(tracker) << tracker.error().message();
  return {std::move(*memory), std::move(*mapping), std::move(*tracker)};
}

// Sends the mappings with `fds` and interprets what arrives as a source handover.
Result<SourceHandover> handOver(const LiveVmm& vmm, std::vector<int> fds) {
  int pair[2];
  EXPECT_EQ(::socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, pair), 0);
  sys::UnixSocket a{sys::UniqueFd(pair[0])}, b{sys::UniqueFd(pair[1])};
  GuestRegionMapping region;
  region.base_host_virt_addr = vmm.mapping.address().value;
  region.size = kBytes;
  EXPECT_TRUE(sendHandshake(a, {region}, fds));
  auto h = receiveHandshake(b, std::chrono::seconds(5), {}, -1, Receiver::kSource);
  if (!h) return std::unexpected(h.error());
  if (auto ok = checkHandedFds(*h, Receiver::kSource); !ok) return std::unexpected(ok.error());
  return sourceHandover(std::move(*h));
}

std::string errorOf(Result<SourceHandover> r) {
  EXPECT_FALSE(r);
  return r ? "" : r.error().message();
}

TEST(SourceHandover, MemoryAloneIsAPausedSource) {
  auto vmm = liveVmm();
  auto h = handOver(vmm, {vmm.memory.get()});
  ASSERT_TRUE(h) << h.error().message();
  EXPECT_FALSE(h->live());
  EXPECT_TRUE(sys::isSharedMemory(h->memory));
  EXPECT_EQ(h->total_bytes, kBytes);
}

TEST(SourceHandover, MemoryUffdAndPagemapAreALiveSource) {
  auto vmm = liveVmm();
  auto h =
      handOver(vmm, {vmm.memory.get(), vmm.tracker.uffd().pollFd(), vmm.tracker.pagemap().get()});
  ASSERT_TRUE(h) << h.error().message();
  ASSERT_TRUE(h->live());
  EXPECT_EQ(h->regions.front().base_host_virt_addr, vmm.mapping.address().value);
  // What the agent does with them: adopt and scan.
  auto uffd = sys::Uffd::adopt(std::move(h->write_tracking_uffd));
  ASSERT_TRUE(uffd) << uffd.error().message();
  auto tracker =
      sys::WriteTracker::adopt(std::move(*uffd), std::move(h->pagemap),
                               {{vmm.mapping.address(), vmm.mapping.size()}}, Bytes{4096});
  ASSERT_TRUE(tracker) << tracker.error().message();
  vmm.mapping.data()[3 * 4096] = std::byte{1};
  std::vector<sys::PageRun> runs;
  ASSERT_TRUE(tracker->takeWritten(0, runs));
  EXPECT_EQ(runs, (std::vector<sys::PageRun>{{3, 1}}));
}

TEST(SourceHandover, EveryWrongFdIsNamedByItsPlace) {
  auto vmm = liveVmm();
  auto devnull = sys::openFile("/dev/null", O_RDONLY);
  ASSERT_TRUE(devnull);
  const int memory = vmm.memory.get(), uffd = vmm.tracker.uffd().pollFd(),
            pagemap = vmm.tracker.pagemap().get(), null = devnull->get();
  auto two = errorOf(handOver(vmm, {memory, uffd}));
  EXPECT_NE(two.find("expected 1 file descriptor"), std::string::npos) << two;
  EXPECT_NE(two.find("got 2"), std::string::npos) << two;
  auto not_memory = errorOf(handOver(vmm, {null, uffd, pagemap}));
  EXPECT_NE(not_memory.find("fd 0 is not guest memory"), std::string::npos) << not_memory;
  auto not_uffd = errorOf(handOver(vmm, {memory, null, pagemap}));
  EXPECT_NE(not_uffd.find("fd 1 is not a userfaultfd (it is /dev/null)"), std::string::npos)
      << not_uffd;
  auto not_pagemap = errorOf(handOver(vmm, {memory, uffd, memory}));
  EXPECT_NE(not_pagemap.find("fd 2 is not the VMM's /proc/self/pagemap (it is /memfd:"),
            std::string::npos)
      << not_pagemap;
}

}  // namespace
}  // namespace lazymig::vmm
