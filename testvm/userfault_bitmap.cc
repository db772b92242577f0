#include "testvm/userfault_bitmap.h"

#include <algorithm>
#include <atomic>
#include <bit>

#include "sys/memory_fd.h"

namespace lazymig::testvm {
namespace {

std::atomic_ref<std::uint64_t> word(std::uint64_t* w) { return std::atomic_ref<std::uint64_t>(*w); }

}  // namespace

Result<UserfaultBitmap> UserfaultBitmap::create(std::uint64_t pages) {
  const std::uint64_t nwords = (pages + 63) / 64;
  const Bytes size{nwords * 8};
  auto fd = sys::createMemfd("lazymig-testvm-userfault-bitmap", size);
  if (!fd) return std::unexpected(fd.error());
  auto map =
      sys::Mapping::ofFd(fd->get(), size, GuestOffset{0}, PROT_READ | PROT_WRITE, MAP_SHARED);
  if (!map) return std::unexpected(map.error());
  UserfaultBitmap b(std::move(*fd), std::move(*map), pages);
  // Every page starts missing. Bits past the last page stay clear: they name no page.
  for (std::uint64_t w = 0; w < nwords; ++w) {
    std::uint64_t first = w * 64;
    std::uint64_t n = std::min<std::uint64_t>(64, pages - first);
    std::uint64_t bits = n == 64 ? ~std::uint64_t{0} : (std::uint64_t{1} << n) - 1;
    word(b.words() + w).store(bits, std::memory_order_release);
  }
  return b;
}

bool UserfaultBitmap::isSet(std::uint64_t page) const {
  std::uint64_t w = word(words() + page / 64).load(std::memory_order_acquire);
  return (w >> (page % 64)) & 1;
}

std::uint64_t UserfaultBitmap::countSet() const {
  std::uint64_t n = 0;
  for (std::uint64_t w = 0; w < (pages_ + 63) / 64; ++w) {
    std::uint64_t bits = word(words() + w).load(std::memory_order_acquire);
    std::uint64_t valid = pages_ - w * 64;
    if (valid < 64) bits &= (std::uint64_t{1} << valid) - 1;
    n += static_cast<std::uint64_t>(std::popcount(bits));
  }
  return n;
}

}  // namespace lazymig::testvm
