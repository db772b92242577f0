// The userfault bitmap of the guest_memfd handshake (../shared/PROTOCOLS.md section 2): one bit
// per 4 KiB guest page in a memfd the VMM shares with KVM and the handler. A set bit means
// "not populated yet": a vCPU touching that page exits to the VMM instead of reading it.
// A kernel ABI: KVM reads the bits in base/bitmap.h's layout (bit i is bit i % 64 of 64-bit
// word i / 64), so it stays exactly that whatever Bitmap becomes.
#pragma once

#include <cstdint>

#include "base/bitmap.h"
#include "base/error.h"
#include "sys/mapping.h"
#include "sys/unique_fd.h"

namespace lazymig::testvm {

class UserfaultBitmap {
 public:
  // A memfd of ceil(pages / 64) * 8 bytes, mapped MAP_SHARED, with every page's bit set.
  static Result<UserfaultBitmap> create(std::uint64_t pages);

  // An acquire load: once the handler has cleared the bit, its writes to the page are visible.
  bool isSet(std::uint64_t page) const;
  // How many pages' bits are still set.
  std::uint64_t countSet() const;
  std::uint64_t pages() const { return pages_; }
  const sys::UniqueFd& fd() const { return fd_; }
  // The VMM's mapping of the bitmap: a KVM guest reads its bits through a memslot of it.
  const sys::Mapping& mapping() const { return mapping_; }

 private:
  UserfaultBitmap(sys::UniqueFd fd, sys::Mapping mapping, std::uint64_t pages)
      : fd_(std::move(fd)),
        mapping_(std::move(mapping)),
        pages_(pages),
        bits_(reinterpret_cast<std::uint64_t*>(mapping_.data()), pages) {}

  sys::UniqueFd fd_;
  sys::Mapping mapping_;
  std::uint64_t pages_ = 0;
  AtomicBitmapView bits_;  // over mapping_, shared with KVM and the handler
};

}  // namespace lazymig::testvm
