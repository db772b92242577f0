#include "agent/destination/population/guest_memory_view.h"

#include <sys/mman.h>
#include <sys/vfs.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>
#include <vector>

#include "sys/memory_fd.h"
#include "sys/truncation_guard.h"

namespace lazymig::agent {

Result<GuestMemoryView> GuestMemoryView::map(const sys::UniqueFd& memory, std::uint64_t bytes,
                                             std::uint64_t page_size, const sys::UniqueFd* bitmap,
                                             bool allow_pwrite) {
  GuestMemoryView v;
  v.fd_ = memory.get();
  // A zero-length pwrite populates nothing: it says only whether the file can be written.
  if (allow_pwrite && ::pwrite(memory.get(), "", 0, 0) == 0) v.method_ = WriteMethod::kPwrite;
  v.page_size_ = page_size;
  v.pages_ = bytes / page_size;
  v.backing_ = describeMemoryFd(memory.get());
  auto size = sys::fileSize(memory.get());
  if (!size) return std::unexpected(size.error());
  if (size->value < bytes) {
    return fail(Errc::kInvalidArgument, "guest memory fd",
                "it holds " + std::to_string(size->value) + " bytes, the regions need " +
                    std::to_string(bytes));
  }
  auto m = sys::Mapping::ofFd(memory.get(), Bytes{bytes}, GuestOffset{0}, PROT_READ | PROT_WRITE,
                              MAP_SHARED);
  if (!m) {
    return fail(
        Errc::kUnsupported, "guest memory fd",
        "the agent cannot map the " + v.backing_ + " read/write (" + m.error().message() +
            (v.backing_ == "guest_memfd" ? "); the VMM must create it with GUEST_MEMFD_FLAG_MMAP"
                                         : ")"));
  }
  v.memory_ = std::move(*m);
  if (bitmap != nullptr) {
    std::uint64_t need = Bitmap::wordsFor(v.pages_) * sizeof(std::uint64_t);
    auto bsize = sys::fileSize(bitmap->get());
    if (!bsize) return std::unexpected(bsize.error());
    if (bsize->value < need) {
      return fail(Errc::kInvalidArgument, "userfault bitmap",
                  "it holds " + std::to_string(bsize->value) + " bytes; one bit for each of " +
                      std::to_string(v.pages_) + " pages needs " + std::to_string(need));
    }
    auto b = sys::Mapping::ofFd(bitmap->get(), Bytes{need}, GuestOffset{0}, PROT_READ | PROT_WRITE,
                                MAP_SHARED);
    if (!b) return std::unexpected(b.error());
    v.bitmap_ = std::move(*b);
    v.bits_ = AtomicBitmapView(reinterpret_cast<std::uint64_t*>(v.bitmap_.data()), v.pages_);
  }
  return v;
}

Result<WriteOutcome> GuestMemoryView::write(PageIndex first, std::uint64_t count,
                                            const std::byte* src) const {
  const std::uint64_t off = first.value * page_size_;
  const std::uint64_t len = count * page_size_;
  if (method_ == WriteMethod::kMmap) {
    // One MADV_POPULATE_WRITE for the run instead of a page fault per page.
    (void)memory_.populate(sys::Mapping::Populate::kWrite, off, len);
    // Guarded: the VMM may have truncated the file since the handover, and a write past its
    // end would be a SIGBUS that ends every migration of this agent.
    auto ok = src != nullptr
                  ? sys::guardedCopy(memory_.data() + off, src, len, "the VMM's guest memory")
                  : sys::guardedZero(memory_.data() + off, len, "the VMM's guest memory");
    if (!ok) return std::unexpected(ok.error());
    return WriteOutcome{};
  }
  static const std::vector<std::byte> zeros(1 << 20, std::byte{0});
  for (std::uint64_t done = 0; done < len;) {
    const std::byte* from = src != nullptr ? src + done : zeros.data();
    std::uint64_t n =
        src != nullptr ? len - done : std::min<std::uint64_t>(len - done, zeros.size());
    ssize_t w = ::pwrite(fd_, from, n, static_cast<off_t>(off + done));
    if (w < 0 && errno == EINTR) continue;
    if (w < 0 && errno == EEXIST) return WriteOutcome{.already_populated = true};
    if (w <= 0) return failSys("pwrite", "guest memory at offset " + std::to_string(off + done));
    done += static_cast<std::uint64_t>(w);
  }
  return WriteOutcome{};
}

std::string describeMemoryFd(int fd) {
  char link[256] = {};
  std::string path = "/proc/self/fd/" + std::to_string(fd);
  ssize_t n = ::readlink(path.c_str(), link, sizeof link - 1);
  std::string target = n > 0 ? std::string(link, static_cast<std::size_t>(n)) : std::string();
  if (target == "anon_inode:[kvm-gmem]") return "guest_memfd";
  constexpr long kHugetlbfsMagic = 0x958458f6;
  struct statfs fs {};
  if (::fstatfs(fd, &fs) == 0 && static_cast<long>(fs.f_type) == kHugetlbfsMagic) {
    return "hugetlbfs";
  }
  if (target.rfind("/memfd:", 0) == 0) return "memfd";
  return "file";
}

}  // namespace lazymig::agent
