#include "testvm/pattern.h"

#include <cstring>

namespace lazymig::testvm {

std::uint64_t mix64(std::uint64_t x) {
  x += 0x9e3779b97f4a7c15ull;
  x = (x ^ (x >> 30)) * 0xbf58476d1ce4e5b9ull;
  x = (x ^ (x >> 27)) * 0x94d049bb133111ebull;
  return x ^ (x >> 31);
}

bool Pattern::isZeroPage(std::uint64_t page) const {
  std::uint64_t h = mix64(seed ^ mix64(page));
  return static_cast<double>(h % 1000000) < zero_ratio * 1000000.0;
}

void Pattern::fillPage(std::uint64_t page, std::span<std::byte> out) const {
  if (isZeroPage(page)) {
    std::memset(out.data(), 0, kPageSize);
    return;
  }
  std::uint64_t state = mix64(seed * 31 + page);
  auto* w = reinterpret_cast<std::uint64_t*>(out.data());
  for (std::size_t i = 0; i < kPageSize / 8; ++i) {
    state += 0x9e3779b97f4a7c15ull;
    std::uint64_t z = state;
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
    // Never an all-zero word: a non-zero page must never look like a zero page.
    w[i] = (z ^ (z >> 27)) | 1;
  }
}

bool Pattern::pageMatches(std::uint64_t page, std::span<const std::byte> in) const {
  alignas(8) std::byte expect[kPageSize];
  fillPage(page, expect);
  return std::memcmp(expect, in.data(), kPageSize) == 0;
}

void Stamp::fill(std::uint64_t page, std::uint64_t generation, std::span<std::byte, kBytes> out) {
  std::uint64_t s = mix64(page * 1000003 + generation);
  for (std::size_t i = 0; i < kBytes; i += 8) {
    s = mix64(s);
    std::memcpy(out.data() + i, &s, 8);
  }
}

}  // namespace lazymig::testvm
