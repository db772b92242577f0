// The paused guest's memory as the source serves it: a snapshot memory file, or a memfd the
// source VMM handed over. Mapped read-only; the source never writes guest memory.
#pragma once

#include <cstdint>
#include <memory>
#include <span>
#include <string>

#include "base/error.h"
#include "sys/mapping.h"
#include "sys/unique_fd.h"
#include "vmm/handshake.h"

namespace lazymig::agent {

class SourceMemory {
 public:
  static Result<std::unique_ptr<SourceMemory>> fromSnapshotFile(const std::string& path,
                                                                std::uint64_t page_size = 4096);
  // The VMM's regions give the memfd's layout; guest page i is at memfd offset i * page_size.
  static Result<std::unique_ptr<SourceMemory>> fromHandover(vmm::Handshake handshake);

  std::uint64_t pageSize() const { return page_size_; }
  std::uint64_t pageCount() const { return mapping_.size().value / page_size_; }
  std::uint64_t bytes() const { return mapping_.size().value; }
  std::span<const std::byte> pages(std::uint64_t first, std::uint64_t count) const {
    return {mapping_.data() + first * page_size_, count * page_size_};
  }
  bool isZero(std::uint64_t page) const;
  // Maps a run of pages into this process before it is read, with one call instead of a
  // page fault per page. Worth it only where the kernel maps one page per fault: a guest_memfd
  // has no fault-around, so reading a fresh mapping of it costs a fault per 4 KiB page (3.7x
  // slower here, lazymig-floors "source reads"); shmem and files map 16 pages per fault, and
  // there prefaulting is slower than faulting.
  bool prefaultHelps() const { return prefault_helps_; }
  void prefault(std::uint64_t first, std::uint64_t count) const;
  const std::string& describe() const { return description_; }

 private:
  SourceMemory(sys::UniqueFd fd, sys::Mapping mapping, std::uint64_t page_size,
               std::string description)
      : fd_(std::move(fd)),
        mapping_(std::move(mapping)),
        page_size_(page_size),
        description_(std::move(description)) {}

  sys::UniqueFd fd_;
  sys::Mapping mapping_;
  std::uint64_t page_size_;
  std::string description_;
  bool prefault_helps_ = false;
};

}  // namespace lazymig::agent
