#include "sys/write_tracker.h"

#include <fcntl.h>
#include <sys/ioctl.h>
#include <sys/statfs.h>

#include <cerrno>
#include <cinttypes>
#include <cstdio>
#include <fstream>
#include <sstream>

#include "sys/memory_fd.h"

namespace lazymig::sys {
namespace {

constexpr std::size_t kDefaultScanCapacity = 1024;  // 24 KiB of runs per PAGEMAP_SCAN call
constexpr long kProcSuperMagic = 0x9fa0;

std::string hex(std::uint64_t v) {
  char b[24];
  std::snprintf(b, sizeof b, "0x%" PRIx64, v);
  return b;
}

std::string rangeText(const TrackedRange& r) { return hex(r.start.value) + "+" + hex(r.len.value); }

Status checkPagemap(const UniqueFd& fd) {
  if (!isProcPagemap(fd)) {
    return fail(Errc::kInvalidArgument, "pagemap",
                "fd " + std::to_string(fd.get()) + " is not a /proc/PID/pagemap (it is " +
                    fd.describe() + ")");
  }
  return {};
}

}  // namespace

bool isProcPagemap(const UniqueFd& fd) {
  struct statfs fs {};
  const std::string what = fd.describe();
  const std::string suffix = "/pagemap";
  return ::fstatfs(fd.get(), &fs) == 0 && fs.f_type == kProcSuperMagic &&
         what.size() > suffix.size() &&
         what.compare(what.size() - suffix.size(), suffix.size(), suffix) == 0;
}

Result<bool> uffdHasFeatures(const Uffd& uffd, std::uint64_t features) {
  // userfaultfd_show_fdinfo() prints "API:\t<api>:<features>:<ioctls>" in hex.
  const std::string path = "/proc/self/fdinfo/" + std::to_string(uffd.pollFd());
  std::ifstream in(path);
  if (!in) return failSys("open", path);
  for (std::string line; std::getline(in, line);) {
    if (line.rfind("API:", 0) != 0) continue;
    std::istringstream fields(line.substr(4));
    std::string api, negotiated;
    if (std::getline(fields >> std::ws, api, ':') && std::getline(fields, negotiated, ':')) {
      const std::uint64_t have = std::strtoull(negotiated.c_str(), nullptr, 16);
      return (have & features) == features;
    }
  }
  return fail(Errc::kUnsupported, "uffd fdinfo", path + " has no API line to read features from");
}

std::uint64_t WriteTracker::uffdFeatures() {
  return abi::kUffdFeatureWpAsync | abi::kUffdFeatureWpHugetlbfsShmem;
}

WriteTracker::WriteTracker(Uffd uffd, UniqueFd pagemap, std::vector<TrackedRange> ranges,
                           Bytes page_size)
    : uffd_(std::move(uffd)),
      pagemap_(std::move(pagemap)),
      ranges_(std::move(ranges)),
      page_size_(page_size),
      scan_buffer_(kDefaultScanCapacity) {}

void WriteTracker::setScanCapacity(std::size_t runs) { scan_buffer_.resize(runs == 0 ? 1 : runs); }

Result<WriteTracker> WriteTracker::trackOwnMemory(std::vector<TrackedRange> ranges,
                                                  Bytes page_size) {
  auto uffd = Uffd::open(uffdFeatures());
  if (!uffd) {
    return fail(Errc::kUnsupported, "write tracking",
                "this kernel has no asynchronous write-protect userfaultfd (Linux 6.7): " +
                    uffd.error().message());
  }
  for (const auto& r : ranges) {
    if (auto ok = uffd->registerRange(r.start, r.len, RegisterMode::kWriteProtect); !ok) {
      return std::unexpected(ok.error());
    }
    if (auto ok = uffd->writeProtect(r.start, r.len); !ok) return std::unexpected(ok.error());
  }
  auto pagemap = openFile("/proc/self/pagemap", O_RDONLY | O_CLOEXEC);
  if (!pagemap) return std::unexpected(pagemap.error());
  WriteTracker tracker(std::move(*uffd), std::move(*pagemap), std::move(ranges), page_size);
  if (auto ok = tracker.checkRegistered(); !ok) return std::unexpected(ok.error());
  return tracker;
}

Result<WriteTracker> WriteTracker::adopt(Uffd uffd, UniqueFd pagemap,
                                         std::vector<TrackedRange> ranges, Bytes page_size) {
  auto has = uffdHasFeatures(uffd, abi::kUffdFeatureWpAsync);
  if (!has) return std::unexpected(has.error());
  if (!*has) {
    return fail(Errc::kInvalidArgument, "write tracking uffd",
                "the uffd was not negotiated with UFFD_FEATURE_WP_ASYNC (" +
                    hex(abi::kUffdFeatureWpAsync) + "): writes would block the VMM");
  }
  if (auto ok = checkPagemap(pagemap); !ok) return std::unexpected(ok.error());
  WriteTracker tracker(std::move(uffd), std::move(pagemap), std::move(ranges), page_size);
  if (auto ok = tracker.checkRegistered(); !ok) return std::unexpected(ok.error());
  return tracker;
}

// A walk with no output buffer and no write-protecting only checks: PM_SCAN_CHECK_WPASYNC
// fails it with EPERM on the first VMA not registered for async write-protect.
Status WriteTracker::checkRegistered() const {
  for (std::size_t i = 0; i < ranges_.size(); ++i) {
    const auto& r = ranges_[i];
    abi::PmScanArg arg{};
    arg.size = sizeof arg;
    arg.flags = abi::kPmScanCheckWpAsync;
    arg.start = r.start.value;
    arg.end = r.start.value + r.len.value;
    arg.category_mask = abi::kPageIsWritten;
    arg.return_mask = abi::kPageIsWritten;
    if (::ioctl(pagemap_.get(), abi::kPagemapScan, &arg) < 0) {
      if (errno == EPERM) {
        return fail(Errc::kInvalidArgument, "write tracking",
                    "range " + std::to_string(i) + " (" + rangeText(r) +
                        ") is not registered with an async write-protect userfaultfd");
      }
      if (errno == ENOTTY) {
        return fail(Errc::kUnsupported, "PAGEMAP_SCAN",
                    "this kernel has no PAGEMAP_SCAN (Linux 6.7)");
      }
      return failSys("PAGEMAP_SCAN", "range " + std::to_string(i) + " (" + rangeText(r) + ")");
    }
  }
  return {};
}

Status WriteTracker::takeWritten(std::size_t range, std::vector<PageRun>& out) {
  const TrackedRange& r = ranges_.at(range);
  const std::uint64_t end = r.start.value + r.len.value;
  const std::size_t first_new = out.size();
  for (std::uint64_t at = r.start.value; at < end;) {
    abi::PmScanArg arg{};
    arg.size = sizeof arg;
    arg.flags = abi::kPmScanWpMatching | abi::kPmScanCheckWpAsync;
    arg.start = at;
    arg.end = end;
    arg.vec = reinterpret_cast<std::uintptr_t>(scan_buffer_.data());
    arg.vec_len = scan_buffer_.size();
    arg.category_mask = abi::kPageIsWritten;
    arg.return_mask = abi::kPageIsWritten;
    int n = ::ioctl(pagemap_.get(), abi::kPagemapScan, &arg);
    if (n < 0) {
      const std::string where =
          "range " + std::to_string(range) + " (" + rangeText(r) + ") at " + hex(at);
      if (errno == EPERM) {
        return fail(Errc::kInvalidArgument, "PAGEMAP_SCAN",
                    where + ": not registered with an async write-protect userfaultfd");
      }
      if (errno == ESRCH)
        return fail(Errc::kPeerGone, "PAGEMAP_SCAN", where + ": the process has exited");
      return failSys("PAGEMAP_SCAN", where);
    }
    for (int i = 0; i < n; ++i) {
      const auto& region = scan_buffer_[static_cast<std::size_t>(i)];
      PageRun run{(region.start - r.start.value) / page_size_.value,
                  (region.end - region.start) / page_size_.value};
      // The kernel merges adjacent pages within one call; a run cut where the buffer filled up
      // continues in the next call's first region.
      if (out.size() > first_new && out.back().first + out.back().count == run.first) {
        out.back().count += run.count;
      } else {
        out.push_back(run);
      }
    }
    if (arg.walk_end <= at || arg.walk_end > end) {
      return fail(Errc::kProtocol, "PAGEMAP_SCAN",
                  "walk_end " + hex(arg.walk_end) + " outside (" + hex(at) + ", " + hex(end) + "]");
    }
    at = arg.walk_end;
  }
  return {};
}

}  // namespace lazymig::sys
