// The owner of one memory mapping. Nothing else in lazymig calls munmap(2).
#pragma once

#include <sys/mman.h>

#include <cstddef>
#include <cstdint>
#include <span>

#include "base/error.h"
#include "base/units.h"

namespace lazymig::sys {

class Mapping {
 public:
  Mapping() = default;
  ~Mapping() { reset(); }
  Mapping(Mapping&& other) noexcept;
  Mapping& operator=(Mapping&& other) noexcept;
  Mapping(const Mapping&) = delete;
  Mapping& operator=(const Mapping&) = delete;

  // Private anonymous read/write memory, optionally on huge pages (MAP_HUGETLB).
  static Result<Mapping> anonymous(Bytes size, bool huge = false);
  // Private anonymous read/write memory on huge pages of exactly `page_size` bytes
  // (MAP_HUGETLB with the size encoded), whatever the system's default huge page size.
  static Result<Mapping> anonymousHugetlb(Bytes size, Bytes page_size);
  // Private anonymous read/write memory that reserves no swap (MAP_NORESERVE): pages cost
  // memory only once written, so a mapping the size of a guest that is mostly never written
  // is cheap.
  static Result<Mapping> anonymousUnreserved(Bytes size);
  // A mapping of fd at offset; flags MAP_SHARED or MAP_PRIVATE, prot PROT_*.
  static Result<Mapping> ofFd(int fd, Bytes size, GuestOffset offset, int prot, int flags);

  std::byte* data() const { return static_cast<std::byte*>(addr_); }
  Bytes size() const { return Bytes{size_}; }
  HostAddr address() const { return HostAddr{reinterpret_cast<std::uintptr_t>(addr_)}; }
  std::span<std::byte> bytes() const { return {data(), size_}; }
  bool valid() const { return addr_ != nullptr; }
  Status advise(int advice, std::size_t offset, std::size_t len) const;
  // Maps [offset, offset + len) into this process's page tables before it is used, with one
  // call instead of a page fault per page (MADV_POPULATE_READ / _WRITE, Linux 5.14; writing
  // also allocates what is missing). Fails, changing nothing, on older kernels.
  enum class Populate { kRead, kWrite };
  Status populate(Populate how, std::size_t offset, std::size_t len) const;
  void reset();

 private:
  Mapping(void* addr, std::size_t size) : addr_(addr), size_(size) {}
  void* addr_ = nullptr;
  std::size_t size_ = 0;
};

}  // namespace lazymig::sys
