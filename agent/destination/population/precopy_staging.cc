#include "agent/destination/population/precopy_staging.h"

#include <bit>
#include <cstring>

namespace lazymig::agent {
namespace {

std::atomic_ref<std::uint64_t> wordRef(const std::vector<std::uint64_t>& words, std::uint64_t w) {
  // The words are only ever accessed atomically; the vector just owns them.
  return std::atomic_ref<std::uint64_t>(const_cast<std::uint64_t&>(words[w]));
}

}  // namespace

Status PrecopyStaging::size(std::uint64_t page_size, std::uint64_t page_count) {
  if (sized()) {
    if (page_size == page_size_ && page_count == page_count_) return {};
    return fail(Errc::kProtocol, "pre-copy staging",
                "the source now serves " + std::to_string(page_count) + " pages of " +
                    std::to_string(page_size) + " bytes, but " + std::to_string(page_count_) +
                    " pages of " + std::to_string(page_size_) + " are staged");
  }
  if (page_size == 0 || page_count == 0) {
    return fail(Errc::kProtocol, "pre-copy staging", "the source serves no memory");
  }
  auto memory = sys::Mapping::anonymousUnreserved(Bytes{page_size * page_count});
  if (!memory) return std::unexpected(memory.error());
  memory_ = std::move(*memory);
  page_size_ = page_size;
  page_count_ = page_count;
  staged_words_.assign(Bitmap::wordsFor(page_count), 0);
  zero_words_.assign(Bitmap::wordsFor(page_count), 0);
  staged_ = AtomicBitmapView(staged_words_.data(), page_count);
  zero_ = AtomicBitmapView(zero_words_.data(), page_count);
  sized_.store(true, std::memory_order_release);
  return {};
}

void PrecopyStaging::stage(PageIndex first, std::uint64_t count, const std::byte* data) {
  const bool after_switch = switched();
  if (data && !after_switch) {
    // Before the switch a newer copy replaces an older one: one copy for the whole run.
    std::memcpy(memory_.data() + first.value * page_size_, data, count * page_size_);
  }
  std::uint64_t fresh = 0;
  for (std::uint64_t i = 0; i < count; ++i) {
    const std::uint64_t p = first.value + i;
    const bool was = isStaged(p);
    // After the switch every copy is the paused memory: keep the one a fault may be reading.
    if (was && after_switch) continue;
    if (data) {
      if (after_switch) {
        std::memcpy(memory_.data() + p * page_size_, data + i * page_size_, page_size_);
      }
      zero_.clear(p);
    } else {
      zero_.set(p);
    }
    if (!was) {
      staged_.set(p);  // release: the bytes and the zero bit above are visible with it
      ++fresh;
    }
  }
  staged_count_.fetch_add(fresh, std::memory_order_relaxed);
}

std::uint64_t PrecopyStaging::dropStale(std::uint64_t first_page,
                                        std::span<const std::uint64_t> words) {
  // After the pause nothing staged can be stale (the stale set was final at the pause), and a
  // stale set sent again on a new link must not drop the post-copy pages staged since.
  if (switched()) return 0;
  std::uint64_t dropped = 0;
  const std::uint64_t first_word = first_page / Bitmap::kBitsPerWord;
  for (std::size_t i = 0; i < words.size(); ++i) {
    const std::uint64_t w = first_word + i;
    if (w >= staged_words_.size()) break;
    const std::uint64_t bits = words[i] & Bitmap::validMask(page_count_, w);
    const std::uint64_t before = wordRef(staged_words_, w).fetch_and(~bits);
    dropped += static_cast<std::uint64_t>(std::popcount(before & bits));
  }
  staged_count_.fetch_sub(dropped, std::memory_order_relaxed);
  stale_dropped_.fetch_add(dropped, std::memory_order_relaxed);
  return dropped;
}

void PrecopyStaging::markSwitched() { switched_.store(true, std::memory_order_release); }

std::optional<PrecopyStaging::Copy> PrecopyStaging::installable(PageIndex page) const {
  if (!switched() || page.value >= page_count_ || !isStaged(page.value)) return std::nullopt;
  if (isZero(page.value)) return Copy{};
  return Copy{memory_.data() + page.value * page_size_};
}

PrecopyStaging::Run PrecopyStaging::nextRun(std::uint64_t from, std::uint64_t max) const {
  std::uint64_t p = from;
  while (p < page_count_) {
    const std::uint64_t w = Bitmap::wordOf(p);
    const std::uint64_t bits = wordRef(staged_words_, w).load(std::memory_order_acquire) &
                               (~std::uint64_t{0} << (p % Bitmap::kBitsPerWord));
    if (bits != 0) {
      p = w * Bitmap::kBitsPerWord + static_cast<std::uint64_t>(std::countr_zero(bits));
      break;
    }
    p = (w + 1) * Bitmap::kBitsPerWord;
  }
  if (p >= page_count_) return {};
  const bool zero = isZero(p);
  std::uint64_t end = p + 1;
  while (end < page_count_ && end - p < max && isStaged(end) && isZero(end) == zero) ++end;
  return {p, end - p, zero ? nullptr : memory_.data() + p * page_size_};
}

void PrecopyStaging::addStagedTo(std::span<std::uint64_t> words) const {
  const std::size_t n = std::min(words.size(), staged_words_.size());
  for (std::size_t w = 0; w < n; ++w) {
    words[w] |= wordRef(staged_words_, w).load(std::memory_order_acquire);
  }
}

}  // namespace lazymig::agent
