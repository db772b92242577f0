#include "vmm/source_handover.h"

#include "sys/memory_fd.h"
#include "sys/uffd.h"
#include "sys/write_tracker.h"

namespace lazymig::vmm {
namespace {

std::unexpected<Error> bad(const std::string& what) {
  return std::unexpected(Error::make(Errc::kInvalidArgument, "memory handover", what));
}

std::unexpected<Error> refuse(int place, const sys::UniqueFd& fd, const std::string& should_be) {
  return bad("fd " + std::to_string(place) + " is not " + should_be + " (it is " + fd.describe() +
             ")");
}

std::size_t fdCount(const Handshake& h) {
  return std::size_t{h.memory.valid()} + h.uffd.valid() + h.pagemap.valid() +
         h.userfault_bitmap.valid();
}

}  // namespace

Status checkSourceFds(const Handshake& h) {
  const sys::UniqueFd& memory = h.memory;
  const sys::UniqueFd& uffd = h.uffd;
  const sys::UniqueFd& pagemap = h.pagemap;
  const std::size_t count = fdCount(h);
  if (count != 1 && count != 3) {
    return bad(
        "expected 1 file descriptor (the paused guest's memory) or 3 (a live source: the "
        "memory, a write-protect userfaultfd and the VMM's pagemap), got " +
        std::to_string(count));
  }
  if (!sys::isSharedMemory(memory)) {
    return refuse(0, memory, "guest memory (a memfd, a hugetlbfs file or a guest_memfd)");
  }
  if (count == 1) return {};
  if (!sys::Uffd::isUserfaultfd(uffd)) return refuse(1, uffd, "a userfaultfd");
  if (!sys::isProcPagemap(pagemap)) return refuse(2, pagemap, "the VMM's /proc/self/pagemap");
  return {};
}

Result<SourceHandover> sourceHandover(Handshake h) {
  if (auto ok = checkSourceFds(h); !ok) return std::unexpected(ok.error());
  SourceHandover out;
  out.regions = std::move(h.regions);
  out.page_size = h.page_size;
  out.total_bytes = h.total_bytes;
  out.memory = std::move(h.memory);
  out.write_tracking_uffd = std::move(h.uffd);
  out.pagemap = std::move(h.pagemap);
  return out;
}

}  // namespace lazymig::vmm
