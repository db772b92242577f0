#include "sys/memory_fd.h"

#include <fcntl.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <sys/vfs.h>
#include <unistd.h>

#include <cstdlib>
#include <optional>

#ifndef MFD_HUGE_SHIFT
#define MFD_HUGE_SHIFT 26  // linux/memfd.h; glibc's sys/mman.h stops at MFD_HUGETLB
#endif

namespace lazymig::sys {

Result<UniqueFd> createMemfd(const std::string& name, Bytes size, bool huge) {
  unsigned flags = MFD_CLOEXEC | (huge ? MFD_HUGETLB : 0u);
  UniqueFd fd(::memfd_create(name.c_str(), flags));
  if (!fd) return failSys("memfd_create", name);
  if (::ftruncate(fd.get(), static_cast<off_t>(size.value)) != 0) {
    return failSys("ftruncate", name + " to " + std::to_string(size.value) + " bytes");
  }
  return fd;
}

Result<UniqueFd> createHugetlbMemfd(const std::string& name, Bytes size, Bytes page_size) {
  unsigned shift = static_cast<unsigned>(__builtin_ctzll(page_size.value));
  unsigned flags = MFD_CLOEXEC | MFD_HUGETLB | (shift << MFD_HUGE_SHIFT);
  UniqueFd fd(::memfd_create(name.c_str(), flags));
  if (!fd) {
    return failSys("memfd_create",
                   name + " (hugetlb, pages of " + std::to_string(page_size.value) + " bytes)");
  }
  if (::ftruncate(fd.get(), static_cast<off_t>(size.value)) != 0) {
    return failSys("ftruncate", name + " to " + std::to_string(size.value) + " bytes");
  }
  return fd;
}

Result<HugePagePool> defaultHugePagePool() {
  constexpr const char* kPath = "/proc/meminfo";
  auto fd = openFile(kPath, O_RDONLY);
  if (!fd) return std::unexpected(fd.error());
  std::string text;
  char buf[4096];
  for (;;) {
    ssize_t n = ::read(fd->get(), buf, sizeof buf);
    if (n < 0 && errno == EINTR) continue;
    if (n < 0) return failSys("read", kPath);
    if (n == 0) break;
    text.append(buf, static_cast<std::size_t>(n));
  }
  auto field = [&](const char* name) -> std::optional<std::uint64_t> {
    std::string key = std::string("\n") + name + ":";
    auto at = text.find(key);
    if (at == std::string::npos) return std::nullopt;
    return std::strtoull(text.c_str() + at + key.size(), nullptr, 10);
  };
  auto total = field("HugePages_Total");
  auto free = field("HugePages_Free");
  auto size_kib = field("Hugepagesize");
  if (!total || !free || !size_kib) {
    return fail(Errc::kUnsupported, kPath,
                "no HugePages_Total/HugePages_Free/Hugepagesize: this kernel has no hugetlbfs");
  }
  return HugePagePool{*total, *free, Bytes{*size_kib * 1024}};
}

bool isGuestMemfd(const UniqueFd& fd) { return fd.describe() == "anon_inode:[kvm-gmem]"; }

bool isSharedMemory(const UniqueFd& fd) {
  if (isGuestMemfd(fd)) return true;
  struct stat st {};
  if (::fstat(fd.get(), &st) != 0 || !S_ISREG(st.st_mode)) return false;
  constexpr long kTmpfsMagic = 0x01021994;  // memfds live on the kernel's internal tmpfs
  constexpr long kHugetlbfsMagic = 0x958458f6;
  struct statfs fs {};
  if (::fstatfs(fd.get(), &fs) != 0) return false;
  const auto type = static_cast<long>(fs.f_type);
  return type == kTmpfsMagic || type == kHugetlbfsMagic;
}

Result<Bytes> fileSize(int fd) {
  struct stat st {};
  if (::fstat(fd, &st) != 0) return failSys("fstat", "fd " + std::to_string(fd));
  return Bytes{static_cast<std::uint64_t>(st.st_size)};
}

Result<UniqueFd> openFile(const std::string& path, int flags, unsigned mode) {
  UniqueFd fd(::open(path.c_str(), flags | O_CLOEXEC, mode));
  if (!fd) return failSys("open", path);
  return fd;
}

Result<UniqueFd> pidfdOpen(pid_t pid) {
  long fd = ::syscall(SYS_pidfd_open, pid, 0);
  if (fd < 0) return failSys("pidfd_open", "pid " + std::to_string(pid));
  return UniqueFd(static_cast<int>(fd));
}

Result<UniqueFd> pidfdGetFd(const UniqueFd& pidfd, int target_fd) {
  long fd = ::syscall(SYS_pidfd_getfd, pidfd.get(), target_fd, 0);
  if (fd < 0) return failSys("pidfd_getfd", "target fd " + std::to_string(target_fd));
  return UniqueFd(static_cast<int>(fd));
}

Status preadAll(int fd, void* buf, std::size_t len, std::uint64_t offset) {
  auto* p = static_cast<char*>(buf);
  while (len > 0) {
    ssize_t n = ::pread(fd, p, len, static_cast<off_t>(offset));
    if (n < 0) {
      if (errno == EINTR) continue;
      return failSys("pread", "offset " + std::to_string(offset));
    }
    if (n == 0)
      return fail(Errc::kInvalidArgument, "pread",
                  "file ends before offset " + std::to_string(offset));
    p += n;
    len -= static_cast<std::size_t>(n);
    offset += static_cast<std::uint64_t>(n);
  }
  return {};
}

Status pwriteAll(int fd, const void* buf, std::size_t len, std::uint64_t offset) {
  const auto* p = static_cast<const char*>(buf);
  while (len > 0) {
    ssize_t n = ::pwrite(fd, p, len, static_cast<off_t>(offset));
    if (n < 0) {
      if (errno == EINTR) continue;
      return failSys("pwrite", "offset " + std::to_string(offset));
    }
    p += n;
    len -= static_cast<std::size_t>(n);
    offset += static_cast<std::uint64_t>(n);
  }
  return {};
}

}  // namespace lazymig::sys
