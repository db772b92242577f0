#include "base/bitmap.h"

#include <algorithm>

namespace lazymig {

Bitmap::Bitmap(std::uint64_t size, bool value) : size_(size), words_(wordsFor(size), 0) {
  if (value) setAll();
}

Bitmap Bitmap::fromWords(std::uint64_t size, std::vector<std::uint64_t> words) {
  Bitmap b;
  b.size_ = size;
  b.words_ = std::move(words);
  b.words_.resize(wordsFor(size), 0);
  if (!b.words_.empty()) b.words_.back() &= validMask(size, b.words_.size() - 1);
  return b;
}

void Bitmap::setAll() {
  for (std::uint64_t w = 0; w < words_.size(); ++w) words_[w] = validMask(size_, w);
}

void Bitmap::merge(const Bitmap& other) {
  const std::size_t n = std::min(words_.size(), other.words_.size());
  for (std::size_t w = 0; w < n; ++w) words_[w] |= other.words_[w];
}

void Bitmap::intersect(const Bitmap& other) {
  for (std::size_t w = 0; w < words_.size(); ++w) {
    words_[w] &= w < other.words_.size() ? other.words_[w] : 0;
  }
}

void Bitmap::subtract(const Bitmap& other) {
  const std::size_t n = std::min(words_.size(), other.words_.size());
  for (std::size_t w = 0; w < n; ++w) words_[w] &= ~other.words_[w];
}

std::uint64_t Bitmap::count() const {
  std::uint64_t n = 0;
  for (auto w : words_) n += static_cast<std::uint64_t>(std::popcount(w));
  return n;
}

std::uint64_t Bitmap::find(std::uint64_t from, std::uint64_t flip) const {
  if (from >= size_) return size_;
  std::uint64_t w = wordOf(from);
  // The first word without the bits before `from`; flipped words look for clear bits.
  std::uint64_t bits = ((words_[w] ^ flip) & validMask(size_, w)) >> (from % kBitsPerWord);
  if (bits != 0) return from + static_cast<std::uint64_t>(std::countr_zero(bits));
  for (++w; w < words_.size(); ++w) {
    bits = (words_[w] ^ flip) & validMask(size_, w);
    if (bits != 0) return w * kBitsPerWord + static_cast<std::uint64_t>(std::countr_zero(bits));
  }
  return size_;
}

std::uint64_t Bitmap::findNextSet(std::uint64_t from) const { return find(from, 0); }
std::uint64_t Bitmap::findNextClear(std::uint64_t from) const {
  return find(from, ~std::uint64_t{0});
}

void AtomicBitmapView::setAll() const {
  for (std::uint64_t w = 0; w < wordCount(); ++w) {
    word(w).store(Bitmap::validMask(size_, w), std::memory_order_release);
  }
}

std::uint64_t AtomicBitmapView::count() const {
  std::uint64_t n = 0;
  for (std::uint64_t w = 0; w < wordCount(); ++w) {
    std::uint64_t bits = word(w).load(std::memory_order_acquire) & Bitmap::validMask(size_, w);
    n += static_cast<std::uint64_t>(std::popcount(bits));
  }
  return n;
}

}  // namespace lazymig
