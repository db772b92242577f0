#include "agent/page_installer.h"

#include <algorithm>
#include <mutex>

namespace lazymig::agent {

using store::PageState;

Result<InstallCounts> PageInstaller::install(PageIndex first, std::uint64_t count,
                                             const std::byte* data,
                                             const std::function<void()>& on_retry,
                                             bool fault_thread) {
  InstallCounts counts;
  const std::uint64_t step = fault_thread ? count : kPagesPerLockedInstall;
  for (std::uint64_t done = 0; done < count;) {
    std::uint64_t n = std::min(step, count - done);
    const std::byte* piece = data ? data + done * layout_.pageSize() : nullptr;
    Result<Step> s;
    {
      std::unique_lock<std::mutex> lock;
      if (!fault_thread) lock = std::unique_lock(events_mu_);
      s = installRun(PageIndex{first.value + done}, n, piece, false, counts);
    }
    if (!s) return std::unexpected(s.error());
    if (*s == Step::kRetry) {
      // Retry this piece: pages installed so far are done now and are skipped.
      if (on_retry) on_retry();
      continue;
    }
    done += n;
  }
  return counts;
}

Result<InstallCounts> PageInstaller::installZeroForRemoved(PageIndex page,
                                                           const std::function<void()>& on_retry) {
  InstallCounts counts;
  for (;;) {
    auto step = installRun(page, 1, nullptr, true, counts);
    if (!step) return std::unexpected(step.error());
    if (*step == Step::kDone) return counts;
    if (on_retry) on_retry();
  }
}

// Walks [first, first+count), installing maximal runs of pages that need it, each split at
// region boundaries so that one ioctl covers one contiguous host range.
Result<PageInstaller::Step> PageInstaller::installRun(PageIndex first, std::uint64_t count,
                                                      const std::byte* data, bool only_removed,
                                                      InstallCounts& counts) {
  const std::uint64_t page_size = layout_.pageSize();
  auto wanted = [&](std::uint64_t p) {
    PageState s = pages_.state(PageIndex{p});
    return only_removed ? s == PageState::kRemoved
                        : (s == PageState::kMissing || s == PageState::kRequested);
  };
  std::uint64_t p = first.value;
  const std::uint64_t end = first.value + count;
  while (p < end) {
    if (!wanted(p)) {
      ++counts.skipped;
      ++p;
      continue;
    }
    std::uint64_t run_end = p + 1;
    while (run_end < end && wanted(run_end)) ++run_end;
    bool retry = false;
    Status status;
    layout_.forEachHostRun(
        PageIndex{p}, run_end - p, [&](PageIndex rfirst, std::uint64_t n, HostAddr host) {
          if (retry || !status) return;
          std::uint64_t off = 0;
          while (off < n) {
            HostAddr dst{host.value + off * page_size};
            Bytes len{(n - off) * page_size};
            auto r =
                data ? uffd_.copy(dst, data + (rfirst.value - first.value + off) * page_size, len)
                     : uffd_.zeroPage(dst, len);
            if (!r) {
              status = std::unexpected(r.error());
              return;
            }
            if (r->outcome == sys::InstallOutcome::kRetry) {
              retry = true;
              return;
            }
            if (r->outcome == sys::InstallOutcome::kAlreadyPresent) {
              pages_.markInstalled(PageIndex{rfirst.value + off});
              ++counts.already_present;
              ++off;
              continue;
            }
            std::uint64_t done_pages = r->done.value / page_size;
            for (std::uint64_t i = 0; i < done_pages; ++i) {
              pages_.markInstalled(PageIndex{rfirst.value + off + i});
            }
            counts.installed += done_pages;
            off += done_pages;
          }
        });
    if (!status) return std::unexpected(status.error());
    if (retry) return Step::kRetry;
    p = run_end;
  }
  return Step::kDone;
}

Status PageInstaller::wake(PageIndex page) const {
  return uffd_.wake(layout_.hostAddrOf(page), Bytes{layout_.pageSize()});
}

std::uint64_t PageInstaller::removeRange(HostAddr start, HostAddr end) {
  std::uint64_t newly_done = 0;
  const std::uint64_t page_size = layout_.pageSize();
  for (std::uint64_t a = start.value & ~(page_size - 1); a < end.value; a += page_size) {
    auto page = layout_.pageOf(HostAddr{a});
    if (page && pages_.markRemoved(*page)) ++newly_done;
  }
  return newly_done;
}

}  // namespace lazymig::agent
