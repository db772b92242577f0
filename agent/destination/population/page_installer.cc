#include "agent/destination/population/page_installer.h"

#include <algorithm>
#include <cstring>
#include <mutex>

namespace lazymig::agent {

using store::PageState;

std::string_view populationPathName(PopulationPath path) {
  switch (path) {
    case PopulationPath::kUffdCopy:
      return "uffd_copy";
    case PopulationPath::kShmemMinorContinue:
      return "shmem_minor_continue";
    case PopulationPath::kGuestMemfd:
      return "guest_memfd";
  }
  return "unknown";
}

std::string_view PageInstaller::pathName() const {
  if (path_ != PopulationPath::kGuestMemfd) return populationPathName(path_);
  return view_->method() == WriteMethod::kPwrite ? "guest_memfd_write" : "guest_memfd_mmap";
}

PageInstaller::PageInstaller(const sys::Uffd& uffd, const GuestLayout& layout,
                             store::PageMap& pages, PopulationPath path,
                             const GuestMemoryView* view)
    : uffd_(uffd), layout_(layout), pages_(pages), path_(path), view_(view) {
  if (path_ != PopulationPath::kUffdCopy && view_ == nullptr) {
    throw std::logic_error("PageInstaller: the write paths need the agent's view of the memory");
  }
  if (path_ == PopulationPath::kUffdCopy && layout_.pageSize() > 4096) {
    zero_page_.assign(layout_.pageSize(), std::byte{0});
  }
}

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
    Result<Step> step = Step::kDone;
    layout_.forEachHostRun(PageIndex{p}, run_end - p,
                           [&](PageIndex rfirst, std::uint64_t n, HostAddr) {
                             if (!step || *step == Step::kRetry) return;
                             step = path_ == PopulationPath::kUffdCopy
                                        ? copyRun(rfirst, n, data, first, counts)
                                        : writeRun(rfirst, n, data, first, only_removed, counts);
                           });
    if (!step || *step == Step::kRetry) return step;
    p = run_end;
  }
  return Step::kDone;
}

Result<PageInstaller::Step> PageInstaller::copyRun(PageIndex first, std::uint64_t n,
                                                   const std::byte* data_base, PageIndex data_first,
                                                   InstallCounts& counts) {
  const std::uint64_t page_size = layout_.pageSize();
  return ioctlRun(
      first, n, "UFFDIO_COPY", "registered with its uffd",
      [&](PageIndex page, HostAddr dst, Bytes len) -> Result<sys::InstallResult> {
        if (data_base != nullptr) {
          return uffd_.copy(dst, data_base + (page.value - data_first.value) * page_size, len);
        }
        if (!zero_page_.empty()) return uffd_.copy(dst, zero_page_.data(), Bytes{page_size});
        return uffd_.zeroPage(dst, len);
      },
      counts);
}

Result<PageInstaller::Step> PageInstaller::ioctlRun(PageIndex first, std::uint64_t count,
                                                    const char* op, const char* registered_how,
                                                    const IssueInstall& issue,
                                                    InstallCounts& counts) {
  const std::uint64_t page_size = layout_.pageSize();
  std::uint64_t off = 0;
  while (off < count) {
    PageIndex page{first.value + off};
    auto r = issue(page, layout_.hostAddrOf(page), Bytes{(count - off) * page_size});
    if (!r) return std::unexpected(r.error());
    switch (r->outcome) {
      case sys::InstallOutcome::kRetry:
        // Pages not yet installed stay missing; on the write paths they were written into the
        // page cache but not mapped, so rewriting them on the retry is safe.
        return Step::kRetry;
      case sys::InstallOutcome::kNotRegistered:
        return fail(Errc::kProtocol, op,
                    "guest page " + std::to_string(page.value) + " is not in a range the VMM " +
                        registered_how);
      case sys::InstallOutcome::kAlreadyPresent:
        pages_.markInstalled(page);
        ++counts.already_present;
        ++off;
        continue;
      case sys::InstallOutcome::kInstalled:
        break;
    }
    std::uint64_t done_pages = r->done.value / page_size;
    for (std::uint64_t i = 0; i < done_pages; ++i) {
      pages_.markInstalled(PageIndex{page.value + i});
    }
    counts.installed += done_pages;
    off += done_pages;
  }
  return Step::kDone;
}

Result<PageInstaller::Step> PageInstaller::writeRun(PageIndex first, std::uint64_t n,
                                                    const std::byte* data_base,
                                                    PageIndex data_first, bool only_removed,
                                                    InstallCounts& counts) {
  const std::uint64_t page_size = layout_.pageSize();
  const bool guest_memfd = path_ == PopulationPath::kGuestMemfd;
  std::lock_guard lock(write_mu_);
  enum class Page { kWrite, kSkip, kPresent };
  auto classify = [&](PageIndex page) -> Result<Page> {
    PageState s = pages_.state(page);
    bool wanted = only_removed ? s == PageState::kRemoved
                               : (s == PageState::kMissing || s == PageState::kRequested);
    if (!wanted) return Page::kSkip;
    if (!guest_memfd) return Page::kWrite;
    // A clear bit: the VMM or an earlier agent populated the page, and a vCPU may have
    // written it since. It is present; it is never written again.
    auto set = view_->bitSet(page);
    if (!set) return std::unexpected(set.error());
    return *set ? Page::kWrite : Page::kPresent;
  };
  auto source = [&](PageIndex page) {
    return data_base ? data_base + (page.value - data_first.value) * page_size : nullptr;
  };
  for (std::uint64_t i = 0; i < n;) {
    PageIndex page{first.value + i};
    auto kind = classify(page);
    if (!kind) return std::unexpected(kind.error());
    if (*kind != Page::kWrite) {
      if (*kind == Page::kPresent) {
        pages_.markInstalled(page);
        ++counts.already_present;
      } else {
        ++counts.skipped;
      }
      ++i;
      continue;
    }
    std::uint64_t j = i + 1;
    for (; j < n; ++j) {
      auto next = classify(PageIndex{first.value + j});
      if (!next) return std::unexpected(next.error());
      if (*next != Page::kWrite) break;
    }
    auto w = view_->write(page, j - i, source(page));
    if (!w) return std::unexpected(w.error());
    if (w->already_populated) {
      // write() on a guest_memfd refuses a populated page (EEXIST): find which, page by page.
      j = i + 1;
      w = view_->write(page, 1, source(page));
      if (!w) return std::unexpected(w.error());
      if (w->already_populated) {
        if (guest_memfd) {
          if (auto ok = view_->clearBit(page); !ok) return std::unexpected(ok.error());
        }
        pages_.markInstalled(page);
        ++counts.already_present;
        ++i;
        continue;
      }
    }
    if (guest_memfd) {
      for (std::uint64_t k = i; k < j; ++k) {
        if (auto ok = view_->clearBit(PageIndex{first.value + k}); !ok) {
          return std::unexpected(ok.error());
        }
        pages_.markInstalled(PageIndex{first.value + k});
      }
      counts.installed += j - i;
    } else {
      auto mapped = continueRun(page, j - i, counts);
      if (!mapped || *mapped == Step::kRetry) return mapped;
    }
    i = j;
  }
  return Step::kDone;
}

// Minor mode: maps pages already in the page cache into the VMM's page table.
Result<PageInstaller::Step> PageInstaller::continueRun(PageIndex first, std::uint64_t count,
                                                       InstallCounts& counts) {
  return ioctlRun(
      first, count, "UFFDIO_CONTINUE", "registered in minor mode",
      [&](PageIndex, HostAddr dst, Bytes len) { return continueRange(dst, len); }, counts);
}

Result<sys::InstallResult> PageInstaller::continueRange(HostAddr dst, Bytes len) {
  auto r = uffd_.continue_(dst, len);
  if (r && r->outcome == sys::InstallOutcome::kNotRegistered) {
    uffd_covers_guest_.store(false, std::memory_order_relaxed);
  }
  return r;
}

Status PageInstaller::makeVisible(PageIndex page) {
  const HostAddr host = layout_.hostAddrOf(page);
  const Bytes len{layout_.pageSize()};
  if (path_ == PopulationPath::kUffdCopy) return uffd_.wake(host, len);
  auto r = continueRange(host, len);
  if (!r) return std::unexpected(r.error());
  switch (r->outcome) {
    case sys::InstallOutcome::kInstalled:      // CONTINUE woke the waiters
    case sys::InstallOutcome::kNotRegistered:  // no uffd covers it, so no vCPU waits on one
      return {};
    case sys::InstallOutcome::kAlreadyPresent:
    case sys::InstallOutcome::kRetry:
      // Mapped already (or the range is changing and the vCPU will fault again): wake.
      return uffd_.wake(host, len);
  }
  return {};
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
