// The deterministic guest memory contents lazymig-testvm writes on the source and verifies on
// the destination: every page a function of (seed, page index), a share of them all-zero.
#pragma once

#include <cstddef>
#include <cstdint>
#include <span>

namespace lazymig::testvm {

constexpr std::size_t kPageSize = 4096;

struct Pattern {
  std::uint64_t seed = 42;
  double zero_ratio = 0.25;

  bool isZeroPage(std::uint64_t page) const;
  // Writes the page's expected source contents into `out` (kPageSize bytes).
  void fillPage(std::uint64_t page, std::span<std::byte> out) const;
  bool pageMatches(std::uint64_t page, std::span<const std::byte> in) const;
};

// A guest write: 64 bytes at a page-dependent offset, derived from (page, generation).
struct Stamp {
  static constexpr std::size_t kBytes = 64;
  static std::size_t offsetIn(std::uint64_t page) {
    return (page * 8 * 13) % (kPageSize - kBytes) & ~std::size_t{7};
  }
  static void fill(std::uint64_t page, std::uint64_t generation, std::span<std::byte, kBytes> out);
};

std::uint64_t mix64(std::uint64_t x);

}  // namespace lazymig::testvm
