// The owner of one userfaultfd. Every uffd ioctl in lazymig goes through this class, and so
// does every interpretation of a uffd errno:
//   EEXIST  the page is already present (another installer, or the guest) -- not an error
//   EAGAIN  the VMM's address space is changing (a remove event is queued): read it, retry
//   ESRCH   the process whose memory this uffd serves has exited
//   ENOENT  the address is not in a range registered with this uffd (a VMM that could not
//           register its guest_memfd mapping): the page is reached by other means
#pragma once

#include <linux/userfaultfd.h>

#include <cstdint>
#include <span>

#include "base/error.h"
#include "base/units.h"
#include "sys/unique_fd.h"

namespace lazymig::sys {

enum class InstallOutcome {
  kInstalled,       // `done` bytes were installed from the start of the range
  kAlreadyPresent,  // the first page of the range was present; nothing was installed
  kRetry,           // the address space was changing; read the uffd's events and retry
  kNotRegistered,   // no range of this uffd covers the address (ENOENT): nothing to install
};

struct InstallResult {
  InstallOutcome outcome = InstallOutcome::kInstalled;
  Bytes done{0};
};

enum class RegisterMode : std::uint64_t {
  kMissing = UFFDIO_REGISTER_MODE_MISSING,
  kMinor = UFFDIO_REGISTER_MODE_MINOR,
  kMissingAndMinor = UFFDIO_REGISTER_MODE_MISSING | UFFDIO_REGISTER_MODE_MINOR,
  // Write-protect tracking (sys/write_tracker.h): with UFFD_FEATURE_WP_ASYNC no fault ever
  // reaches a handler; the kernel only records that the page was written.
  kWriteProtect = UFFDIO_REGISTER_MODE_WP,
};

class Uffd {
 public:
  Uffd() = default;
  // Open a new uffd (non-blocking, close-on-exec) and negotiate `features` with UFFDIO_API.
  // Tries /dev/userfaultfd first, then the userfaultfd(2) system call.
  static Result<Uffd> open(std::uint64_t features);
  // Take a uffd another process created and negotiated (a VMM's, received over SCM_RIGHTS,
  // or taken back from it after a restart). Refuses a descriptor that is not a userfaultfd,
  // naming what it is, and makes it non-blocking: a VMM may create it blocking (legal, and
  // some of Firecracker's own examples do), and a blocking read on an empty queue would put
  // the fault thread to sleep in the kernel with the events lock held.
  static Result<Uffd> adopt(UniqueFd fd);
  // Whether `fd` is a userfaultfd, from the anonymous inode the kernel gave it.
  static bool isUserfaultfd(const UniqueFd& fd);

  // Returns the bitmask of ioctls the kernel offers on the range (1 << _UFFDIO_COPY, ...).
  Result<std::uint64_t> registerRange(HostAddr start, Bytes len, RegisterMode mode) const;
  Status unregisterRange(HostAddr start, Bytes len) const;

  Result<InstallResult> copy(HostAddr dst, const void* src, Bytes len, bool wake = true) const;
  Result<InstallResult> zeroPage(HostAddr dst, Bytes len, bool wake = true) const;
  Result<InstallResult> continue_(HostAddr dst, Bytes len, bool wake = true) const;
  Status wake(HostAddr start, Bytes len) const;
  // UFFDIO_WRITEPROTECT: protect (or unprotect) a range registered with kWriteProtect.
  Status writeProtect(HostAddr start, Bytes len, bool protect = true) const;

  // Reads as many queued events as fit into `out`; 0 when none are queued.
  Result<std::size_t> readEvents(std::span<uffd_msg> out) const;

  // For poll(2)/libevent registration only.
  int pollFd() const { return fd_.get(); }
  const UniqueFd& fd() const { return fd_; }
  bool valid() const { return fd_.valid(); }

 private:
  explicit Uffd(UniqueFd fd) : fd_(std::move(fd)) {}
  Result<InstallResult> interpret(const char* op, std::int64_t result, HostAddr dst) const;

  UniqueFd fd_;
};

}  // namespace lazymig::sys
