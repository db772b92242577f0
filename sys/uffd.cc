#include "sys/uffd.h"

#include <fcntl.h>
#include <sys/ioctl.h>
#include <sys/syscall.h>
#include <unistd.h>

#include <cerrno>

namespace lazymig::sys {
namespace {

std::string rangeText(HostAddr start, Bytes len) {
  char buf[64];
  std::snprintf(buf, sizeof buf, "0x%llx+%llu", static_cast<unsigned long long>(start.value),
                static_cast<unsigned long long>(len.value));
  return buf;
}

#ifndef USERFAULTFD_IOC_NEW
#define USERFAULTFD_IOC_NEW _IO(0xAA, 0x00)
#endif

Result<UniqueFd> openRaw() {
  constexpr int kFlags = O_CLOEXEC | O_NONBLOCK;
  UniqueFd dev(::open("/dev/userfaultfd", O_RDWR | O_CLOEXEC));
  if (dev) {
    int fd = ::ioctl(dev.get(), USERFAULTFD_IOC_NEW, kFlags);
    if (fd >= 0) return UniqueFd(fd);
  }
  long fd = ::syscall(SYS_userfaultfd, kFlags);
  if (fd < 0) {
    return failSys("userfaultfd",
                   "neither /dev/userfaultfd nor the system call gave a uffd "
                   "(check vm.unprivileged_userfaultfd or CAP_SYS_PTRACE)");
  }
  return UniqueFd(static_cast<int>(fd));
}

}  // namespace

Result<Uffd> Uffd::open(std::uint64_t features) {
  auto fd = openRaw();
  if (!fd) return std::unexpected(fd.error());
  uffdio_api api{};
  api.api = UFFD_API;
  api.features = features;
  if (::ioctl(fd->get(), UFFDIO_API, &api) != 0) {
    return failSys(
        "UFFDIO_API", "features 0x" + [&] {
          char b[24];
          std::snprintf(b, sizeof b, "%llx", static_cast<unsigned long long>(features));
          return std::string(b);
        }() + " not all supported by this kernel");
  }
  return Uffd(std::move(*fd));
}

bool Uffd::isUserfaultfd(const UniqueFd& fd) { return fd.describe() == "anon_inode:[userfaultfd]"; }

Result<Uffd> Uffd::adopt(UniqueFd fd) {
  if (!isUserfaultfd(fd)) {
    return fail(
        Errc::kInvalidArgument, "uffd",
        "fd " + std::to_string(fd.get()) + " is not a userfaultfd (it is " + fd.describe() + ")");
  }
  // O_NONBLOCK lives on the open file description the VMM shares with us; the VMM never
  // reads its uffd (the handler does), so setting it changes nothing for the VMM.
  int flags = ::fcntl(fd.get(), F_GETFL);
  if (flags < 0) return failSys("fcntl", "F_GETFL on the uffd");
  if (!(flags & O_NONBLOCK) && ::fcntl(fd.get(), F_SETFL, flags | O_NONBLOCK) != 0) {
    return failSys("fcntl", "F_SETFL O_NONBLOCK on the uffd");
  }
  return Uffd(std::move(fd));
}

Result<std::uint64_t> Uffd::registerRange(HostAddr start, Bytes len, RegisterMode mode) const {
  uffdio_register reg{};
  reg.range.start = start.value;
  reg.range.len = len.value;
  reg.mode = static_cast<std::uint64_t>(mode);
  if (::ioctl(fd_.get(), UFFDIO_REGISTER, &reg) != 0) {
    return failSys("UFFDIO_REGISTER", rangeText(start, len));
  }
  return reg.ioctls;
}

Status Uffd::unregisterRange(HostAddr start, Bytes len) const {
  uffdio_range range{start.value, len.value};
  if (::ioctl(fd_.get(), UFFDIO_UNREGISTER, &range) != 0) {
    if (errno == ESRCH) return fail(Errc::kPeerGone, "UFFDIO_UNREGISTER", "the VMM has exited");
    return failSys("UFFDIO_UNREGISTER", rangeText(start, len));
  }
  return {};
}

Result<InstallResult> Uffd::interpret(const char* op, std::int64_t result, HostAddr dst) const {
  // The install ioctls report their real outcome in the struct: the bytes done when positive,
  // -errno otherwise. A positive count short of the length also arrives as -1/EAGAIN.
  if (result > 0) return InstallResult{InstallOutcome::kInstalled, Bytes{std::uint64_t(result)}};
  int err = result < 0 ? static_cast<int>(-result) : errno;
  switch (err) {
    case EEXIST:
      return InstallResult{InstallOutcome::kAlreadyPresent, Bytes{0}};
    case EAGAIN:
      return InstallResult{InstallOutcome::kRetry, Bytes{0}};
    case ESRCH:
      return fail(Errc::kPeerGone, op, "the VMM owning the guest memory has exited");
    case ENOENT:
      return InstallResult{InstallOutcome::kNotRegistered, Bytes{0}};
    default:
      return failSys(op, rangeText(dst, Bytes{0}), err);
  }
}

Result<InstallResult> Uffd::copy(HostAddr dst, const void* src, Bytes len, bool wake) const {
  uffdio_copy c{};
  c.dst = dst.value;
  c.src = reinterpret_cast<std::uintptr_t>(src);
  c.len = len.value;
  c.mode = wake ? 0 : UFFDIO_COPY_MODE_DONTWAKE;
  if (::ioctl(fd_.get(), UFFDIO_COPY, &c) == 0)
    return InstallResult{InstallOutcome::kInstalled, len};
  if (c.copy == 0) c.copy = -errno;
  return interpret("UFFDIO_COPY", c.copy, dst);
}

Result<InstallResult> Uffd::zeroPage(HostAddr dst, Bytes len, bool wake) const {
  uffdio_zeropage z{};
  z.range = {dst.value, len.value};
  z.mode = wake ? 0 : UFFDIO_ZEROPAGE_MODE_DONTWAKE;
  if (::ioctl(fd_.get(), UFFDIO_ZEROPAGE, &z) == 0) {
    return InstallResult{InstallOutcome::kInstalled, len};
  }
  if (z.zeropage == 0) z.zeropage = -errno;
  return interpret("UFFDIO_ZEROPAGE", z.zeropage, dst);
}

Result<InstallResult> Uffd::continue_(HostAddr dst, Bytes len, bool wake) const {
  uffdio_continue c{};
  c.range = {dst.value, len.value};
  c.mode = wake ? 0 : UFFDIO_CONTINUE_MODE_DONTWAKE;
  if (::ioctl(fd_.get(), UFFDIO_CONTINUE, &c) == 0) {
    return InstallResult{InstallOutcome::kInstalled, len};
  }
  if (c.mapped == 0) c.mapped = -errno;
  return interpret("UFFDIO_CONTINUE", c.mapped, dst);
}

Status Uffd::wake(HostAddr start, Bytes len) const {
  uffdio_range range{start.value, len.value};
  if (::ioctl(fd_.get(), UFFDIO_WAKE, &range) != 0) {
    if (errno == ESRCH) return fail(Errc::kPeerGone, "UFFDIO_WAKE", "the VMM has exited");
    return failSys("UFFDIO_WAKE", rangeText(start, len));
  }
  return {};
}

Status Uffd::writeProtect(HostAddr start, Bytes len, bool protect) const {
  uffdio_writeprotect wp{};
  wp.range = {start.value, len.value};
  wp.mode = protect ? UFFDIO_WRITEPROTECT_MODE_WP : 0;
  if (::ioctl(fd_.get(), UFFDIO_WRITEPROTECT, &wp) != 0) {
    if (errno == ESRCH) return fail(Errc::kPeerGone, "UFFDIO_WRITEPROTECT", "the VMM has exited");
    return failSys("UFFDIO_WRITEPROTECT", rangeText(start, len));
  }
  return {};
}

Result<std::size_t> Uffd::readEvents(std::span<uffd_msg> out) const {
  for (;;) {
    ssize_t n = ::read(fd_.get(), out.data(), out.size_bytes());
    if (n >= 0) {
      if (n % sizeof(uffd_msg) != 0) {
        return fail(Errc::kProtocol, "uffd read",
                    "short uffd_msg of " + std::to_string(n) + " bytes");
      }
      return static_cast<std::size_t>(n) / sizeof(uffd_msg);
    }
    if (errno == EINTR) continue;
    if (errno == EAGAIN) return std::size_t{0};
    return failSys("uffd read");
  }
}

}  // namespace lazymig::sys
