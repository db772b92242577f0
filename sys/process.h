// Looking into another process (the VMM) through /proc and pidfds: which of its descriptors
// is its userfaultfd or its guest memory, and which of its pages are present. This is how a
// restarted agent takes back what the dead one held (invariant 4).
#pragma once

#include <sys/types.h>

#include <cstdint>
#include <functional>
#include <string>
#include <vector>

#include "base/bitmap.h"
#include "base/error.h"
#include "base/units.h"
#include "sys/unique_fd.h"

namespace lazymig::sys {

// The fd numbers of `pid` whose /proc/PID/fd/N link target satisfies `match`
// (e.g. "anon_inode:[userfaultfd]", "/memfd:guest (deleted)").
Result<std::vector<int>> findFds(pid_t pid, const std::function<bool(const std::string&)>& match);

// Takes a copy of descriptor `fd` of process `pid` (pidfd_open + pidfd_getfd; needs
// CAP_SYS_PTRACE over the target, or the same uid with ptrace scope 0).
Result<UniqueFd> takeFd(pid_t pid, int fd);

// Takes a copy of whichever descriptor of `pid` refers to the file with this device and
// inode (recorded with fstat when the VMM handed it over).
Result<UniqueFd> takeFdByInode(pid_t pid, std::uint64_t dev, std::uint64_t ino);

// For `pages` pages of `page_size` from `start` in `pid`'s address space, sets bit i of the
// result when page i is present in RAM or swapped out (/proc/PID/pagemap bits 63 and 62).
Result<Bitmap> presentPages(pid_t pid, HostAddr start, std::uint64_t pages,
                            std::uint64_t page_size);

bool processAlive(pid_t pid);

}  // namespace lazymig::sys
