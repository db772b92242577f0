// Creating and passing the file descriptors that hold guest memory: memfd, hugetlbfs memfd,
// guest_memfd, and pidfds for taking a uffd back from a VMM.
#pragma once

#include <sys/types.h>

#include <string>

#include "base/error.h"
#include "base/units.h"
#include "sys/unique_fd.h"

namespace lazymig::sys {

// A memfd of `size` bytes (MFD_CLOEXEC; MFD_HUGETLB when huge).
Result<UniqueFd> createMemfd(const std::string& name, Bytes size, bool huge = false);
// A hugetlbfs memfd of `size` bytes in huge pages of exactly `page_size` bytes (MFD_HUGETLB with
// the size encoded). Its huge pages are reserved when it is mapped, not here.
Result<UniqueFd> createHugetlbMemfd(const std::string& name, Bytes size, Bytes page_size);

// The default huge page pool as /proc/meminfo reports it (HugePages_Total, HugePages_Free,
// Hugepagesize); /proc/sys/vm/nr_hugepages sizes it.
struct HugePagePool {
  std::uint64_t total = 0;
  std::uint64_t free = 0;
  Bytes page_size{0};
};
Result<HugePagePool> defaultHugePagePool();

Result<Bytes> fileSize(int fd);
// Whether `fd` is memory a handler can share with a VMM: a file on tmpfs (a memfd, /dev/shm)
// or hugetlbfs, or a guest_memfd. Anything else (a pipe, /dev/null, a file on disk) cannot
// back guest memory that minor faults or KVM userfault fill.
bool isSharedMemory(const UniqueFd& fd);
bool isGuestMemfd(const UniqueFd& fd);
Result<UniqueFd> openFile(const std::string& path, int flags, unsigned mode = 0600);
// pidfd_open(2) and pidfd_getfd(2): take a copy of descriptor `target_fd` of process `pid`.
Result<UniqueFd> pidfdOpen(pid_t pid);
Result<UniqueFd> pidfdGetFd(const UniqueFd& pidfd, int target_fd);
// Reads all of [offset, offset+len) or fails; short files are an error.
Status preadAll(int fd, void* buf, std::size_t len, std::uint64_t offset);
Status pwriteAll(int fd, const void* buf, std::size_t len, std::uint64_t offset);

}  // namespace lazymig::sys
