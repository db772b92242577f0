// Strong types for the units lazymig moves: a bare integer never carries its unit in a comment.
#pragma once

#include <compare>
#include <cstdint>
#include <functional>

namespace lazymig {

template <class Tag>
struct Quantity {
  std::uint64_t value = 0;
  constexpr Quantity() = default;
  constexpr explicit Quantity(std::uint64_t v) : value(v) {}
  constexpr auto operator<=>(const Quantity&) const = default;
};

struct PageIndexTag {};
struct BytesTag {};
struct HostAddrTag {};
struct GuestOffsetTag {};

// A page's position in guest memory, counted in pages of the migration's page size.
using PageIndex = Quantity<PageIndexTag>;
// A length in bytes.
using Bytes = Quantity<BytesTag>;
// An address in some process's virtual address space (the VMM's, for uffd ioctls).
using HostAddr = Quantity<HostAddrTag>;
// A byte offset into guest memory as laid out in the snapshot memory file.
using GuestOffset = Quantity<GuestOffsetTag>;

constexpr Bytes operator*(Bytes b, std::uint64_t n) { return Bytes{b.value * n}; }
constexpr Bytes operator+(Bytes a, Bytes b) { return Bytes{a.value + b.value}; }
constexpr HostAddr operator+(HostAddr a, Bytes b) { return HostAddr{a.value + b.value}; }
constexpr GuestOffset operator+(GuestOffset a, Bytes b) { return GuestOffset{a.value + b.value}; }
constexpr PageIndex operator+(PageIndex p, std::uint64_t n) { return PageIndex{p.value + n}; }

constexpr std::uint64_t kKiB = 1024;
constexpr std::uint64_t kMiB = 1024 * kKiB;
constexpr std::uint64_t kGiB = 1024 * kMiB;

}  // namespace lazymig

template <class Tag>
struct std::hash<lazymig::Quantity<Tag>> {
  std::size_t operator()(const lazymig::Quantity<Tag>& q) const noexcept {
    return std::hash<std::uint64_t>{}(q.value);
  }
};
