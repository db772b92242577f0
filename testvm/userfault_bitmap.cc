#include "testvm/userfault_bitmap.h"

#include "sys/memory_fd.h"

namespace lazymig::testvm {

Result<UserfaultBitmap> UserfaultBitmap::create(std::uint64_t pages) {
  const Bytes size{Bitmap::wordsFor(pages) * sizeof(std::uint64_t)};
  auto fd = sys::createMemfd("lazymig-testvm-userfault-bitmap", size);
  if (!fd) return std::unexpected(fd.error());
  auto map =
      sys::Mapping::ofFd(fd->get(), size, GuestOffset{0}, PROT_READ | PROT_WRITE, MAP_SHARED);
  if (!map) return std::unexpected(map.error());
  UserfaultBitmap b(std::move(*fd), std::move(*map), pages);
  // Every page starts missing. Bits past the last page stay clear: they name no page.
  b.bits_.setAll();
  return b;
}

bool UserfaultBitmap::isSet(std::uint64_t page) const { return bits_.test(page); }

std::uint64_t UserfaultBitmap::countSet() const { return bits_.count(); }

}  // namespace lazymig::testvm
