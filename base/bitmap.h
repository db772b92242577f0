// Bitmaps of pages, in the one layout every page bitmap of lazymig uses: bit i is bit (i % 64)
// of 64-bit word i / 64, and bits past the last one are clear. That layout is also what leaves
// the process -- the Resume frames on the wire, the page-map chunks in RocksDB, what
// /proc/<pid>/pagemap is turned into, and KVM's userfault bitmap (a kernel ABI) -- so words()
// exposes it as it is.
#pragma once

#include <atomic>
#include <bit>
#include <cstdint>
#include <span>
#include <vector>

namespace lazymig {

class Bitmap {
 public:
  static constexpr std::uint64_t kBitsPerWord = 64;
  // How many words hold `bits` bits.
  static constexpr std::uint64_t wordsFor(std::uint64_t bits) {
    return (bits + kBitsPerWord - 1) / kBitsPerWord;
  }
  static constexpr std::uint64_t wordOf(std::uint64_t bit) { return bit / kBitsPerWord; }
  // Bit `bit`'s mask within its word.
  static constexpr std::uint64_t maskOf(std::uint64_t bit) {
    return std::uint64_t{1} << (bit % kBitsPerWord);
  }
  // The bits of word `word` that name one of `bits` bits (all but the last word: every bit).
  static constexpr std::uint64_t validMask(std::uint64_t bits, std::uint64_t word) {
    const std::uint64_t first = word * kBitsPerWord;
    if (bits >= first + kBitsPerWord) return ~std::uint64_t{0};
    return bits <= first ? 0 : (std::uint64_t{1} << (bits - first)) - 1;
  }

  Bitmap() = default;
  explicit Bitmap(std::uint64_t size, bool value = false);
  // Takes words in this layout (loaded from disk, from the wire, from the kernel); missing
  // words are clear, extra words and bits past `size` are dropped.
  static Bitmap fromWords(std::uint64_t size, std::vector<std::uint64_t> words);

  std::uint64_t size() const { return size_; }
  bool test(std::uint64_t bit) const { return (words_[wordOf(bit)] & maskOf(bit)) != 0; }
  void set(std::uint64_t bit) { words_[wordOf(bit)] |= maskOf(bit); }
  void clear(std::uint64_t bit) { words_[wordOf(bit)] &= ~maskOf(bit); }
  void setAll();
  // Every bit set in `other` (of the same size) is set here too.
  void merge(const Bitmap& other);
  // Only the bits set in `other` too stay set (bits past `other`'s words are cleared).
  void intersect(const Bitmap& other);
  // Every bit set in `other` is cleared here.
  void subtract(const Bitmap& other);
  std::uint64_t count() const;
  // The first set (clear) bit at or after `from`; size() when there is none.
  std::uint64_t findNextSet(std::uint64_t from) const;
  std::uint64_t findNextClear(std::uint64_t from) const;

  std::span<const std::uint64_t> words() const { return words_; }
  // For a writer that fills whole words (a Resume frame); bits past size() must stay clear.
  std::span<std::uint64_t> mutableWords() { return words_; }
  std::vector<std::uint64_t> takeWords() && { return std::move(words_); }
  bool operator==(const Bitmap&) const = default;

 private:
  std::uint64_t find(std::uint64_t from, std::uint64_t flip) const;

  std::uint64_t size_ = 0;
  std::vector<std::uint64_t> words_;
};

// The same layout in memory another thread, process or the kernel reads and writes at the same
// time (a MAP_SHARED mapping, a word array shared between threads): every access is atomic.
// A view: the words' owner keeps them alive and sized wordsFor(size).
class AtomicBitmapView {
 public:
  AtomicBitmapView() = default;
  AtomicBitmapView(std::uint64_t* words, std::uint64_t size) : words_(words), size_(size) {}

  std::uint64_t size() const { return size_; }
  // Acquire: whatever was written before the bit changed is visible.
  bool test(std::uint64_t bit) const {
    return (word(Bitmap::wordOf(bit)).load(std::memory_order_acquire) & Bitmap::maskOf(bit)) != 0;
  }
  // Release: whatever was written before is visible to whoever sees the bit change.
  void set(std::uint64_t bit) const {
    word(Bitmap::wordOf(bit)).fetch_or(Bitmap::maskOf(bit), std::memory_order_release);
  }
  void clear(std::uint64_t bit) const {
    word(Bitmap::wordOf(bit)).fetch_and(~Bitmap::maskOf(bit), std::memory_order_release);
  }
  // Sets every bit; bits past size() are cleared.
  void setAll() const;
  std::uint64_t count() const;
  // Word `w` as it was, and cleared (acquire and release): a set bit is taken exactly once.
  std::uint64_t takeWord(std::uint64_t w) const {
    return word(w).exchange(0, std::memory_order_acq_rel);
  }
  std::uint64_t wordCount() const { return Bitmap::wordsFor(size_); }

 private:
  std::atomic_ref<std::uint64_t> word(std::uint64_t w) const {
    return std::atomic_ref<std::uint64_t>(words_[w]);
  }

  std::uint64_t* words_ = nullptr;
  std::uint64_t size_ = 0;
};

}  // namespace lazymig
