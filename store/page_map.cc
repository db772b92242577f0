#include "store/page_map.h"

namespace lazymig::store {

PageMap::PageMap(std::uint64_t page_count)
    : page_count_(page_count),
      states_(new std::atomic<std::uint8_t>[page_count]),
      dirty_words_(Bitmap::wordsFor((page_count + kPagesPerChunk - 1) / kPagesPerChunk), 0),
      dirty_(dirty_words_.data(), (page_count + kPagesPerChunk - 1) / kPagesPerChunk) {
  for (std::uint64_t i = 0; i < page_count; ++i) states_[i].store(0, std::memory_order_relaxed);
}

bool PageMap::tryMarkRequested(PageIndex page) {
  auto expected = static_cast<std::uint8_t>(PageState::kMissing);
  return states_[page.value].compare_exchange_strong(
      expected, static_cast<std::uint8_t>(PageState::kRequested), std::memory_order_acq_rel);
}

void PageMap::clearRequested(PageIndex page) {
  auto expected = static_cast<std::uint8_t>(PageState::kRequested);
  states_[page.value].compare_exchange_strong(
      expected, static_cast<std::uint8_t>(PageState::kMissing), std::memory_order_acq_rel);
}

bool PageMap::transitionToDone(PageIndex page, PageState target) {
  auto prev =
      states_[page.value].exchange(static_cast<std::uint8_t>(target), std::memory_order_acq_rel);
  bool was_done = prev == static_cast<std::uint8_t>(PageState::kInstalled) ||
                  prev == static_cast<std::uint8_t>(PageState::kRemoved);
  if (prev != static_cast<std::uint8_t>(target)) markDirty(page);
  if (!was_done) done_.fetch_add(1, std::memory_order_acq_rel);
  return !was_done;
}

bool PageMap::markInstalled(PageIndex page) {
  return transitionToDone(page, PageState::kInstalled);
}
bool PageMap::markRemoved(PageIndex page) { return transitionToDone(page, PageState::kRemoved); }

void PageMap::markDirty(PageIndex page) { markChunkDirty(page.value / kPagesPerChunk); }

void PageMap::markChunkDirty(std::uint64_t chunk) { dirty_.set(chunk); }

void PageMap::markChunksDirty(std::span<const BitmapChunk> chunks) {
  for (const auto& c : chunks) markChunkDirty(c.chunk_index);
}

BitmapChunk PageMap::snapshotChunk(std::uint64_t chunk) const {
  Bitmap done(kPagesPerChunk);
  std::uint64_t first = chunk * kPagesPerChunk;
  std::uint64_t last = std::min(first + kPagesPerChunk, page_count_);
  for (std::uint64_t p = first; p < last; ++p) {
    if (isDone(PageIndex{p})) done.set(p - first);
  }
  return BitmapChunk{chunk, std::move(done).takeWords()};
}

std::vector<BitmapChunk> PageMap::takeDirtyChunks() {
  std::vector<BitmapChunk> out;
  for (std::uint64_t w = 0; w < dirty_.wordCount(); ++w) {
    // Clearing before reading the pages means a page done concurrently re-dirties the
    // chunk and is written again next time, never lost.
    auto taken = Bitmap::fromWords(Bitmap::kBitsPerWord, {dirty_.takeWord(w)});
    for (auto b = taken.findNextSet(0); b < taken.size(); b = taken.findNextSet(b + 1)) {
      out.push_back(snapshotChunk(w * Bitmap::kBitsPerWord + b));
    }
  }
  return out;
}

std::vector<std::uint64_t> PageMap::doneBitmap() const {
  Bitmap done(page_count_);
  for (std::uint64_t p = 0; p < page_count_; ++p) {
    if (isDone(PageIndex{p})) done.set(p);
  }
  return std::move(done).takeWords();
}

void PageMap::restoreInstalled(std::span<const std::uint64_t> words) {
  const auto installed = Bitmap::fromWords(page_count_, {words.begin(), words.end()});
  for (auto p = installed.findNextSet(0); p < page_count_; p = installed.findNextSet(p + 1)) {
    auto prev = states_[p].exchange(static_cast<std::uint8_t>(PageState::kInstalled));
    if (prev != static_cast<std::uint8_t>(PageState::kInstalled) &&
        prev != static_cast<std::uint8_t>(PageState::kRemoved)) {
      done_.fetch_add(1, std::memory_order_acq_rel);
    }
  }
}

}  // namespace lazymig::store
