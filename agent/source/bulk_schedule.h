// The order in which the source streams pages on the bulk channel: after a pre-copy switch the
// guest's hot set first (putFirst), then pages next to recent demand faults (a guest that
// faults at p usually touches p+1, p+2, ... next), then everything else in ascending order. Pages
// the destination already has, and pages already sent, are skipped. Loop-thread-only; pure logic so
// it can be tested on its own.
#pragma once

#include <cstdint>
#include <deque>
#include <optional>
#include <span>
#include <vector>

#include "base/bitmap.h"

namespace lazymig::agent {

struct PageRun {
  std::uint64_t first = 0;
  std::uint64_t count = 0;
};

class BulkSchedule {
 public:
  // window: how many pages after a fault are moved to the front.
  explicit BulkSchedule(std::uint64_t page_count, std::uint64_t window = 256,
                        std::size_t max_hot_windows = 64);

  // The destination's Resume: set bits are pages it has; everything else is to send again.
  void reset(std::span<const std::uint64_t> installed_bitmap);
  // A page went out another way (a demand reply): the bulk stream need not send it.
  void markSent(std::uint64_t page);
  // Pages to send before any other (pre-copy's stale pages and hot set); kept across reset().
  void putFirst(Bitmap pages);
  // A vCPU faulted at `page`: pull the pages after it to the front.
  void noteFault(std::uint64_t page);
  // The next run of at most max_pages contiguous unsent pages, marked sent; none when done.
  std::optional<PageRun> next(std::uint64_t max_pages);
  std::uint64_t remaining() const { return remaining_; }
  std::uint64_t pageCount() const { return page_count_; }

 private:
  bool sent(std::uint64_t p) const { return sent_.test(p); }
  std::optional<std::uint64_t> firstUnsentFrom(std::uint64_t from, std::uint64_t end) const;
  PageRun take(std::uint64_t first, std::uint64_t end, std::uint64_t max_pages);

  struct Window {
    std::uint64_t next;
    std::uint64_t end;
  };
  std::uint64_t page_count_;
  std::uint64_t window_;
  std::size_t max_hot_windows_;
  Bitmap sent_;
  std::uint64_t remaining_ = 0;
  std::uint64_t cursor_ = 0;
  std::deque<Window> hot_;  // most recent fault first
  Bitmap first_;            // putFirst's pages; empty when none
  std::uint64_t first_cursor_ = 0;
};

}  // namespace lazymig::agent
