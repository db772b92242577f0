// The hot, in-memory page map of one destination migration: one byte of state per page,
// O(1) and lock-free, plus dirty-chunk tracking so that the RocksDB checkpoint (database.h)
// copies only what changed. RocksDB is this map's durable checkpoint, never its hot path.
#pragma once

#include <atomic>
#include <cstdint>
#include <memory>
#include <span>
#include <vector>

#include "base/bitmap.h"
#include "base/units.h"
#include "store/database.h"

namespace lazymig::store {

enum class PageState : std::uint8_t {
  kMissing = 0,    // not in the guest; faults on it go to the source
  kRequested = 1,  // missing, and a demand request for it is in flight
  kInstalled = 2,  // present in the guest; nothing may write it again
  kRemoved = 3,    // the guest discarded it (UFFD_EVENT_REMOVE): it must read as zeros,
                   // never as its old contents, and counts as done for completion
};

class PageMap {
 public:
  explicit PageMap(std::uint64_t page_count);

  std::uint64_t pageCount() const { return page_count_; }
  PageState state(PageIndex page) const {
    return static_cast<PageState>(states_[page.value].load(std::memory_order_acquire));
  }
  // kMissing -> kRequested; false when the page is in any other state.
  bool tryMarkRequested(PageIndex page);
  // A request is abandoned (link lost): kRequested -> kMissing.
  void clearRequested(PageIndex page);
  // Any state -> kInstalled; returns true when this call made the page done.
  bool markInstalled(PageIndex page);
  // kMissing/kRequested -> kRemoved; an installed page becomes removed too (the guest
  // dropped it). Returns true when this call made the page done.
  bool markRemoved(PageIndex page);

  // Pages installed or removed.
  std::uint64_t doneCount() const { return done_.load(std::memory_order_acquire); }
  bool complete() const { return doneCount() == page_count_; }
  bool isDone(PageIndex page) const {
    auto s = state(page);
    return s == PageState::kInstalled || s == PageState::kRemoved;
  }

  // Chunks changed since the last call, with the done-bit of every page in them. A page
  // that becomes done while this runs is caught by the next call.
  std::vector<BitmapChunk> takeDirtyChunks();
  // Chunks taken but not written (the write failed): the next takeDirtyChunks() returns them.
  void markChunksDirty(std::span<const BitmapChunk> chunks);
  // Done-bitmap of the whole map (bit set = installed or removed), as the words of the Resume
  // frames (base/bitmap.h's layout).
  std::vector<std::uint64_t> doneBitmap() const;
  // Restart: mark every page whose bit is set in these words (that layout) as installed
  // (clean, not dirty).
  void restoreInstalled(std::span<const std::uint64_t> words);

 private:
  bool transitionToDone(PageIndex page, PageState target);
  void markDirty(PageIndex page);
  void markChunkDirty(std::uint64_t chunk);
  BitmapChunk snapshotChunk(std::uint64_t chunk) const;

  std::uint64_t page_count_;
  std::unique_ptr<std::atomic<std::uint8_t>[]> states_;
  std::vector<std::uint64_t> dirty_words_;  // only through dirty_
  AtomicBitmapView dirty_;                  // one bit per chunk
  std::atomic<std::uint64_t> done_{0};
};

}  // namespace lazymig::store
