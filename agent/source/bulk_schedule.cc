#include "agent/source/bulk_schedule.h"

#include <algorithm>

namespace lazymig::agent {

BulkSchedule::BulkSchedule(std::uint64_t page_count, std::uint64_t window,
                           std::size_t max_hot_windows)
    : page_count_(page_count),
      window_(window),
      max_hot_windows_(max_hot_windows),
      sent_(page_count),
      remaining_(page_count) {}

void BulkSchedule::reset(std::span<const std::uint64_t> installed_bitmap) {
  sent_ = Bitmap::fromWords(page_count_, {installed_bitmap.begin(), installed_bitmap.end()});
  remaining_ = page_count_ - sent_.count();
  cursor_ = 0;
  first_cursor_ = 0;
  hot_.clear();
}

void BulkSchedule::putFirst(Bitmap pages) {
  first_ = std::move(pages);
  first_cursor_ = 0;
}

void BulkSchedule::markSent(std::uint64_t page) {
  if (page >= page_count_ || sent(page)) return;
  sent_.set(page);
  --remaining_;
}

void BulkSchedule::noteFault(std::uint64_t page) {
  if (page >= page_count_) return;
  std::uint64_t end = std::min(page_count_, page + 1 + window_);
  // A fault inside a window already queued moves that window to the front instead of
  // queuing a duplicate.
  for (auto it = hot_.begin(); it != hot_.end(); ++it) {
    if (page >= it->next && page < it->end) {
      Window w{page + 1, std::max(it->end, end)};
      hot_.erase(it);
      hot_.push_front(w);
      return;
    }
  }
  hot_.push_front(Window{page + 1, end});
  if (hot_.size() > max_hot_windows_) hot_.pop_back();
}

std::optional<std::uint64_t> BulkSchedule::firstUnsentFrom(std::uint64_t from,
                                                           std::uint64_t end) const {
  std::uint64_t p = sent_.findNextClear(from);
  return p < end ? std::optional(p) : std::nullopt;
}

PageRun BulkSchedule::take(std::uint64_t first, std::uint64_t end, std::uint64_t max_pages) {
  std::uint64_t last = first;
  while (last < end && last - first < max_pages && !sent(last)) {
    sent_.set(last);
    ++last;
  }
  remaining_ -= last - first;
  return PageRun{first, last - first};
}

std::optional<PageRun> BulkSchedule::next(std::uint64_t max_pages) {
  if (remaining_ == 0 || max_pages == 0) return std::nullopt;
  while (first_cursor_ < first_.size()) {
    std::uint64_t p = first_.findNextSet(first_cursor_);
    if (p >= first_.size()) {
      first_cursor_ = p;
      break;
    }
    if (sent(p)) {
      first_cursor_ = p + 1;
      continue;
    }
    std::uint64_t end = p;
    while (end < first_.size() && first_.test(end)) ++end;
    PageRun run = take(p, end, max_pages);
    first_cursor_ = run.first + run.count;
    return run;
  }
  while (!hot_.empty()) {
    Window& w = hot_.front();
    auto p = firstUnsentFrom(w.next, w.end);
    if (!p) {
      hot_.pop_front();
      continue;
    }
    PageRun run = take(*p, w.end, max_pages);
    w.next = run.first + run.count;
    return run;
  }
  auto p = firstUnsentFrom(cursor_, page_count_);
  if (!p) p = firstUnsentFrom(0, page_count_);  // pages re-queued behind the cursor
  if (!p) return std::nullopt;
  PageRun run = take(*p, page_count_, max_pages);
  cursor_ = run.first + run.count;
  return run;
}

}  // namespace lazymig::agent
