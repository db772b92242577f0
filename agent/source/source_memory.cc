#include "agent/source/source_memory.h"

#include <fcntl.h>

#include <sys/mman.h>
#include <sys/stat.h>

#include <cstring>

#include "sys/kvm.h"
#include "sys/memory_fd.h"

namespace lazymig::agent {

Result<std::unique_ptr<SourceMemory>> SourceMemory::fromSnapshotFile(const std::string& path,
                                                                     std::uint64_t page_size) {
  // O_NONBLOCK: opening a FIFO for reading would otherwise wait for a writer, on the control
  // API's thread. Only a regular file is a memory snapshot.
  auto fd = sys::openFile(path, O_RDONLY | O_NONBLOCK);
  if (!fd) return std::unexpected(fd.error());
  struct stat st {};
  if (::fstat(fd->get(), &st) != 0) return failSys("fstat", path);
  if (!S_ISREG(st.st_mode)) {
    return fail(Errc::kInvalidArgument, "snapshot memory file",
                path + " is not a regular file (it is " + fd->describe() +
                    (S_ISFIFO(st.st_mode) ? ", a FIFO" : "") + ")");
  }
  auto size = sys::fileSize(fd->get());
  if (!size) return std::unexpected(size.error());
  if (size->value == 0 || size->value % page_size != 0) {
    return fail(Errc::kInvalidArgument, "snapshot memory file",
                path + ": size " + std::to_string(size->value) +
                    " is not a non-zero multiple of the page size " + std::to_string(page_size));
  }
  auto map = sys::Mapping::ofFd(fd->get(), *size, GuestOffset{0}, PROT_READ, MAP_SHARED);
  if (!map) return std::unexpected(map.error());
  // The bulk stream reads the file front to back; tell the kernel to read ahead.
  (void)map->advise(MADV_SEQUENTIAL, 0, size->value);
  return std::unique_ptr<SourceMemory>(
      new SourceMemory(std::move(*fd), std::move(*map), page_size, "snapshot file " + path));
}

Result<std::unique_ptr<SourceMemory>> SourceMemory::fromHandover(vmm::Handshake handshake) {
  if (handshake.kind != vmm::HandshakeKind::kClassic || !handshake.memory.valid()) {
    return fail(Errc::kInvalidArgument, "memory handover",
                "expected exactly one file descriptor (the guest memory fd)");
  }
  sys::UniqueFd fd = std::move(handshake.memory);
  auto size = sys::fileSize(fd.get());
  if (!size) return std::unexpected(size.error());
  if (size->value < handshake.total_bytes) {
    return fail(Errc::kInvalidArgument, "memory handover",
                "the memory fd holds " + std::to_string(size->value) + " bytes, the regions need " +
                    std::to_string(handshake.total_bytes));
  }
  auto map = sys::Mapping::ofFd(fd.get(), Bytes{handshake.total_bytes}, GuestOffset{0}, PROT_READ,
                                MAP_SHARED);
  if (!map) return std::unexpected(map.error());
  const bool guest_memfd = sys::isGuestMemfd(fd.get());
  std::unique_ptr<SourceMemory> memory(
      new SourceMemory(std::move(fd), std::move(*map), handshake.page_size,
                       guest_memfd ? "guest_memfd from the VMM" : "memory fd from the VMM"));
  memory->prefault_helps_ = guest_memfd;
  return memory;
}

void SourceMemory::prefault(std::uint64_t first, std::uint64_t count) const {
  // Best effort: without MADV_POPULATE_READ (Linux < 5.14) the reads fault pages in instead.
  (void)mapping_.populate(sys::Mapping::Populate::kRead, first * page_size_, count * page_size_);
}

bool SourceMemory::isZero(std::uint64_t page) const {
  const auto* p = reinterpret_cast<const std::uint64_t*>(mapping_.data() + page * page_size_);
  std::uint64_t acc = 0;
  // OR in blocks of 8 words: the compiler vectorises it, and a non-zero page usually shows in
  // the first block, so the early exit keeps the common case short.
  for (std::size_t i = 0; i < page_size_ / 8; i += 8) {
    for (std::size_t j = 0; j < 8; ++j) acc |= p[i + j];
    if (acc != 0) return false;
  }
  return true;
}

}  // namespace lazymig::agent
