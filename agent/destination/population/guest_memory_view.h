// The agent's own view of guest memory that lives in a file the VMM handed over (a memfd in
// minor mode, a guest_memfd): a shared mapping through which pages are written into the
// page cache without the guest seeing them yet, and, for guest_memfd, the userfault bitmap
// the VMM shares with KVM (bit set = the page is not populated; a vCPU touching it exits).
//
// Page i of the guest lives at byte i * page_size of the memory fd: the VMM maps its regions
// at their `offset`s, which the handshake validates to be contiguous from 0. The bitmap has one
// bit per guest page in base/bitmap.h's layout, which is KVM's: a kernel ABI, kept as it is.
#pragma once

#include <atomic>
#include <cstdint>
#include <string>
#include <string_view>

#include "base/bitmap.h"
#include "base/error.h"
#include "base/units.h"
#include "sys/mapping.h"
#include "sys/unique_fd.h"

namespace lazymig::agent {

// How page bytes reach the file. pwrite(2) is several times faster where the file takes it
// (memfd; guest_memfd with GUEST_MEMFD_FLAG_WRITE): the kernel fills the page cache without a
// page fault per page in our mapping, and on a paravirtual guest those faults dominate.
enum class WriteMethod { kPwrite, kMmap };

struct WriteOutcome {
  bool already_populated = false;  // write() said EEXIST: someone populated the page first
};

class GuestMemoryView {
 public:
  GuestMemoryView() = default;
  // Maps `bytes` of `memory` read/write and shared; with a bitmap fd, maps one bit per page.
  // `allow_pwrite`: use pwrite when the file accepts it (tests turn it off to exercise the
  // mapping path a mainline guest_memfd needs).
  static Result<GuestMemoryView> map(const sys::UniqueFd& memory, std::uint64_t bytes,
                                     std::uint64_t page_size, const sys::UniqueFd* bitmap,
                                     bool allow_pwrite = true);

  // Writes pages [first, first+count) from `src` (count * page_size bytes; zeros when null).
  // With pwrite on a guest_memfd that reports EEXIST, count must be 1 and the outcome says so.
  Result<WriteOutcome> write(PageIndex first, std::uint64_t count, const std::byte* src) const;
  WriteMethod method() const { return method_; }
  std::string_view methodName() const {
    return method_ == WriteMethod::kPwrite ? "pwrite" : "mmap";
  }
  std::byte* page(PageIndex p) const { return memory_.data() + p.value * page_size_; }
  std::uint64_t pageSize() const { return page_size_; }
  bool hasBitmap() const { return bitmap_.valid(); }
  // The bitmap is the VMM's file, which it may truncate: each access is guarded
  // (sys/truncation_guard.h), an error rather than a SIGBUS.
  // Acquire: a clear bit means the page's bytes were written before it was cleared.
  Result<bool> bitSet(PageIndex p) const;
  // Release: the page's bytes are written before any vCPU can see the bit clear.
  Status clearBit(PageIndex p) const;
  Result<std::uint64_t> bitsSet() const;
  // What the memory fd is, for the status ("guest_memfd", "memfd", "hugetlbfs", "file").
  const std::string& backing() const { return backing_; }

 private:
  int fd_ = -1;  // the caller keeps the memory fd open as long as this view
  WriteMethod method_ = WriteMethod::kMmap;
  sys::Mapping memory_;
  sys::Mapping bitmap_;
  std::uint64_t* bitmapWord(PageIndex p) const {
    return reinterpret_cast<std::uint64_t*>(bitmap_.data()) + Bitmap::wordOf(p.value);
  }
  std::uint64_t page_size_ = 4096;
  std::uint64_t pages_ = 0;
  std::string backing_;
};

// What a memory fd is, from its /proc/self/fd link: "guest_memfd" (anon_inode:[kvm-gmem]),
// "hugetlbfs" (a MFD_HUGETLB memfd), "memfd", or "file".
std::string describeMemoryFd(int fd);

}  // namespace lazymig::agent
