// Where a pre-copy destination keeps the pages its source sent while the source VM still ran
// (docs/precopy.md): a copy of a page made before the pause may be older than the paused
// memory, so none of it is installed until the source has said which ones are stale (its
// StalePages frames, the one with `last` being "the switch"). Staged pages live in anonymous
// MAP_NORESERVE memory the size of the guest (a page costs memory only once staged); zero runs
// are recorded in a bitmap, without memory.
//
// Threads: the bulk loop stages, drops and switches; after the switch the urgent loop may read
// staged pages too (a fault served from the staging). So every bit is atomic, a page's bytes
// are written before its staged bit is set (release) and read after it is seen (acquire),
// and after the switch a staged page is never written again (both copies are the paused
// memory). The status reads the counters from any thread.
#pragma once

#include <atomic>
#include <cstdint>
#include <optional>
#include <span>
#include <vector>

#include "base/bitmap.h"
#include "base/error.h"
#include "base/units.h"
#include "sys/mapping.h"

namespace lazymig::agent {

class PrecopyStaging {
 public:
  // Unsized: the destination learns the guest's layout from the source's HelloOk.
  PrecopyStaging() = default;
  PrecopyStaging(const PrecopyStaging&) = delete;
  PrecopyStaging& operator=(const PrecopyStaging&) = delete;

  // Bulk loop. Sizes the staging once; the same layout again changes nothing, another one is
  // an error that says both.
  Status size(std::uint64_t page_size, std::uint64_t page_count);
  // Any thread.
  bool sized() const { return sized_.load(std::memory_order_acquire); }
  std::uint64_t pageSize() const { return page_size_; }    // once sized()
  std::uint64_t pageCount() const { return page_count_; }  // once sized()

  // Bulk loop. A copy of [first, first + count) (`data`: count * pageSize() bytes, or null for
  // zero pages), newer than anything staged before the switch. After the switch a page already
  // staged is kept as it is. The range is checked by the frame decoder.
  void stage(PageIndex first, std::uint64_t count, const std::byte* data);
  // Bulk loop: a StalePages chunk (its first page and words); the pages it names are no longer
  // staged. Returns how many were. After the switch it changes nothing.
  std::uint64_t dropStale(std::uint64_t first_page, std::span<const std::uint64_t> words);
  // Bulk loop: the StalePages frame with `last` arrived; what is staged now may be installed.
  void markSwitched();
  bool switched() const { return switched_.load(std::memory_order_acquire); }

  // A staged page's copy: its bytes, or null for a zero page.
  struct Copy {
    const std::byte* data = nullptr;
  };
  // Any thread: the staged copy of `page` once switched, nothing before the switch (no copy is
  // installable then) or when it is not staged.
  std::optional<Copy> installable(PageIndex page) const;
  // A run of staged pages, all with data or all zero; count 0 when there is none.
  struct Run {
    std::uint64_t first = 0;
    std::uint64_t count = 0;
    const std::byte* data = nullptr;  // null: zero pages
  };
  // The first run at or after `from`, of at most `max` pages. Bulk loop (or after the switch).
  Run nextRun(std::uint64_t from, std::uint64_t max) const;
  // ORs the staged bits into `words` (the Resume bitmap: what this destination has).
  void addStagedTo(std::span<std::uint64_t> words) const;
  // Pages installed from the staging, by the drain or by a fault (any thread).
  void countInstalled(std::uint64_t pages) {
    installed_.fetch_add(pages, std::memory_order_relaxed);
  }

  // Any thread, for the status: each exact, not one instant's snapshot of all of them.
  std::uint64_t stagedPages() const { return staged_count_.load(std::memory_order_relaxed); }
  std::uint64_t staleDropped() const { return stale_dropped_.load(std::memory_order_relaxed); }
  std::uint64_t installedFromStaging() const { return installed_.load(std::memory_order_relaxed); }

 private:
  bool isStaged(std::uint64_t page) const { return staged_.test(page); }
  bool isZero(std::uint64_t page) const { return zero_.test(page); }

  std::uint64_t page_size_ = 0;
  std::uint64_t page_count_ = 0;
  sys::Mapping memory_;
  std::vector<std::uint64_t> staged_words_;
  std::vector<std::uint64_t> zero_words_;
  AtomicBitmapView staged_;  // a copy is here (zero_ says which kind)
  AtomicBitmapView zero_;    // the staged copy is a zero page (no bytes in memory_)
  std::atomic<bool> sized_{false};
  std::atomic<bool> switched_{false};
  std::atomic<std::uint64_t> staged_count_{0};
  std::atomic<std::uint64_t> stale_dropped_{0};
  std::atomic<std::uint64_t> installed_{0};
};

}  // namespace lazymig::agent
