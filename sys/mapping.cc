#include "sys/mapping.h"

#include <utility>

namespace lazymig::sys {

Mapping::Mapping(Mapping&& other) noexcept
    : addr_(std::exchange(other.addr_, nullptr)), size_(std::exchange(other.size_, 0)) {}

Mapping& Mapping::operator=(Mapping&& other) noexcept {
  if (this != &other) {
    reset();
    addr_ = std::exchange(other.addr_, nullptr);
    size_ = std::exchange(other.size_, 0);
  }
  return *this;
}

void Mapping::reset() {
  if (addr_ != nullptr) ::munmap(addr_, size_);
  addr_ = nullptr;
  size_ = 0;
}

Result<Mapping> Mapping::anonymous(Bytes size, bool huge) {
  int flags = MAP_PRIVATE | MAP_ANONYMOUS | (huge ? MAP_HUGETLB : 0);
  void* p = ::mmap(nullptr, size.value, PROT_READ | PROT_WRITE, flags, -1, 0);
  if (p == MAP_FAILED) {
    return failSys("mmap", (huge ? "anonymous hugetlb " : "anonymous ") +
                               std::to_string(size.value) + " bytes");
  }
  return Mapping(p, size.value);
}

Result<Mapping> Mapping::anonymousUnreserved(Bytes size) {
  void* p = ::mmap(nullptr, size.value, PROT_READ | PROT_WRITE,
                   MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
  if (p == MAP_FAILED) {
    return failSys("mmap", "anonymous unreserved " + std::to_string(size.value) + " bytes");
  }
  return Mapping(p, size.value);
}

Result<Mapping> Mapping::anonymousHugetlb(Bytes size, Bytes page_size) {
  int shift = __builtin_ctzll(page_size.value);
  int flags = MAP_PRIVATE | MAP_ANONYMOUS | MAP_HUGETLB | (shift << MAP_HUGE_SHIFT);
  void* p = ::mmap(nullptr, size.value, PROT_READ | PROT_WRITE, flags, -1, 0);
  if (p == MAP_FAILED) {
    return failSys("mmap", "anonymous hugetlb " + std::to_string(size.value) +
                               " bytes in pages of " + std::to_string(page_size.value));
  }
  return Mapping(p, size.value);
}

Result<Mapping> Mapping::ofFd(int fd, Bytes size, GuestOffset offset, int prot, int flags) {
  void* p = ::mmap(nullptr, size.value, prot, flags, fd, static_cast<off_t>(offset.value));
  if (p == MAP_FAILED) {
    return failSys("mmap", "fd " + std::to_string(fd) + " offset " + std::to_string(offset.value) +
                               " length " + std::to_string(size.value));
  }
  return Mapping(p, size.value);
}

Status Mapping::populate(Populate how, std::size_t offset, std::size_t len) const {
  // Debian 12's headers predate these (Linux 5.14).
  constexpr int kPopulateRead = 22;   // MADV_POPULATE_READ
  constexpr int kPopulateWrite = 23;  // MADV_POPULATE_WRITE
  return advise(how == Populate::kRead ? kPopulateRead : kPopulateWrite, offset, len);
}

Status Mapping::advise(int advice, std::size_t offset, std::size_t len) const {
  if (::madvise(data() + offset, len, advice) != 0) {
    return failSys("madvise", "advice " + std::to_string(advice));
  }
  return {};
}

}  // namespace lazymig::sys
