#include "cli/huge_pages.h"

#include <fcntl.h>
#include <sys/file.h>
#include <unistd.h>

#include <cerrno>
#include <cstdio>
#include <fstream>
#include <string>
#include <utility>

#include "sys/memory_fd.h"
#include "sys/unique_fd.h"

namespace lazymig::cli {
namespace {

constexpr const char* kNrHugepages = "/proc/sys/vm/nr_hugepages";

Result<std::uint64_t> readNrHugepages() {
  std::ifstream in(kNrHugepages);
  std::uint64_t n = 0;
  if (!(in >> n)) return fail(Errc::kSystem, "read", std::string(kNrHugepages) + ": unreadable");
  return n;
}

Status writeNrHugepages(std::uint64_t n) {
  sys::UniqueFd fd(::open(kNrHugepages, O_WRONLY | O_CLOEXEC));
  if (!fd) return failSys("open", kNrHugepages);
  std::string text = std::to_string(n) + "\n";
  if (::write(fd.get(), text.data(), text.size()) != static_cast<ssize_t>(text.size())) {
    return failSys("write", std::string(kNrHugepages) + " <- " + std::to_string(n));
  }
  return {};
}

Result<sys::UniqueFd> lockHugePages(bool verbose) {
  sys::UniqueFd fd(::open(kHugePageLockFile, O_RDWR | O_CREAT | O_CLOEXEC, 0666));
  if (!fd) return failSys("open", kHugePageLockFile);
  if (::flock(fd.get(), LOCK_EX | LOCK_NB) == 0) return fd;
  if (errno != EWOULDBLOCK) return failSys("flock", kHugePageLockFile);
  if (verbose) {
    std::fprintf(stderr, "demo: waiting for another demo to give its huge pages back (%s)\n",
                 kHugePageLockFile);
  }
  while (::flock(fd.get(), LOCK_EX) != 0) {
    if (errno != EINTR) return failSys("flock", kHugePageLockFile);
  }
  return fd;
}

}  // namespace

Result<HugePageReservation> HugePageReservation::ensureFree(std::uint64_t pages, bool verbose) {
  HugePageReservation r;
  r.verbose_ = verbose;
  auto lock = lockHugePages(verbose);
  if (!lock) return std::unexpected(lock.error());
  r.lock_ = std::move(*lock);
  // Read under the lock: what another demo had raised is back by now.
  auto pool = sys::defaultHugePagePool();
  if (!pool) return std::unexpected(pool.error());
  if (pool->page_size.value != kHugePage) {
    return fail(Errc::kUnsupported, "huge pages",
                "the default huge page size here is " + std::to_string(pool->page_size.value) +
                    " bytes, not 2 MiB, so " + kNrHugepages +
                    " does not size the pool the hugetlb VMs use");
  }
  if (pool->free >= pages) return r;
  const std::uint64_t shortfall = pages - pool->free;
  auto before = readNrHugepages();
  if (!before) return std::unexpected(before.error());
  const std::uint64_t target = *before + shortfall;
  auto need = [&] {
    return "the demo needs " + std::to_string(pages) +
           " free 2 MiB huge pages (HugePages_Free is " + std::to_string(pool->free) +
           "); as root: echo " + std::to_string(target) + " > " + kNrHugepages;
  };
  if (auto ok = writeNrHugepages(target); !ok) {
    return fail(
        Errc::kUnsupported, "huge pages",
        "cannot raise " + std::string(kNrHugepages) + " (" + ok.error().message() + "): " + need());
  }
  r.restore_to_ = *before;  // from here on the destructor puts it back
  auto after = sys::defaultHugePagePool();
  if (!after) return std::unexpected(after.error());
  if (after->free < pages) {
    return fail(Errc::kUnsupported, "huge pages",
                "raised " + std::string(kNrHugepages) + " to " + std::to_string(target) +
                    " but the kernel found memory for only " + std::to_string(after->free) +
                    " free 2 MiB pages (not enough free memory): " + need());
  }
  if (verbose) {
    std::fprintf(stderr,
                 "demo: raised %s from %llu to %llu: %llu free 2 MiB huge pages needed for the "
                 "source and destination VMs; it goes back to %llu when the demo ends\n",
                 kNrHugepages, static_cast<unsigned long long>(*before),
                 static_cast<unsigned long long>(target), static_cast<unsigned long long>(pages),
                 static_cast<unsigned long long>(*before));
  }
  return r;
}

HugePageReservation::HugePageReservation(HugePageReservation&& other) noexcept
    : restore_to_(std::exchange(other.restore_to_, std::nullopt)),
      verbose_(other.verbose_),
      lock_(std::move(other.lock_)) {}

HugePageReservation& HugePageReservation::operator=(HugePageReservation&& other) noexcept {
  if (this != &other) {
    HugePageReservation old(std::move(*this));  // restores on leaving this scope
    restore_to_ = std::exchange(other.restore_to_, std::nullopt);
    verbose_ = other.verbose_;
    lock_ = std::move(other.lock_);
  }
  return *this;
}

HugePageReservation::~HugePageReservation() {
  if (!restore_to_) return;
  auto ok = writeNrHugepages(*restore_to_);
  if (!ok) {
    std::fprintf(stderr, "demo: could not put %s back to %llu: %s\n", kNrHugepages,
                 static_cast<unsigned long long>(*restore_to_), ok.error().message().c_str());
  } else if (verbose_) {
    std::fprintf(stderr, "demo: %s back to %llu\n", kNrHugepages,
                 static_cast<unsigned long long>(*restore_to_));
  }
}

}  // namespace lazymig::cli
