#include "bench/population.h"

#include <linux/userfaultfd.h>

#include <algorithm>
#include <chrono>
#include <cstring>

#include "agent/destination/population/guest_layout.h"
#include "agent/destination/population/guest_memory_view.h"
#include "agent/destination/population/page_installer.h"
#include "agent/source/source_memory.h"
#include "base/bitmap.h"
#include "store/page_map.h"
#include "sys/kvm.h"
#include "sys/mapping.h"
#include "sys/memory_fd.h"
#include "sys/uffd.h"

namespace lazymig::bench {
namespace {

using agent::PopulationPath;
using Clock = std::chrono::steady_clock;

enum class Memory {
  kAnon,
  kMemfd,
  kMemfdMinor,
  kGuestMemfdShape,         // pwrite, as a memfd (or a GUEST_MEMFD_FLAG_WRITE guest_memfd) allows
  kGuestMemfdShapeMapping,  // through the mapping, as a mainline guest_memfd needs
  kGuestMemfdKvm,           // a real guest_memfd from /dev/kvm, through the mapping
  kHugetlb,
};

// Installs `bytes` of non-zero pages in batches of 256 KiB (the bulk stream's default) and
// returns MiB/s, or a negative number when the memory could not be set up.
double installOnce(Memory kind, std::size_t bytes) {
  const bool huge = kind == Memory::kHugetlb;
  const std::uint64_t page = huge ? 2ull << 20 : 4096;
  sys::UniqueFd memfd, bitmap_fd;
  Result<sys::Mapping> guest = std::unexpected(Error::make(Errc::kSystem, "", ""));
  if (kind == Memory::kAnon) {
    guest = sys::Mapping::anonymous(Bytes{bytes});
  } else if (kind == Memory::kGuestMemfdKvm) {
    auto fd = sys::createMappableGuestMemfd(Bytes{bytes});
    if (!fd) return -1;
    memfd = std::move(*fd);
    guest = sys::Mapping::ofFd(memfd.get(), Bytes{bytes}, GuestOffset{0}, PROT_READ | PROT_WRITE,
                               MAP_SHARED);
  } else if (huge) {
    guest = sys::Mapping::anonymousHugetlb(Bytes{bytes}, Bytes{page});
  } else {
    auto fd = sys::createMemfd("bench", Bytes{bytes});
    if (!fd) return -1;
    memfd = std::move(*fd);
    guest = sys::Mapping::ofFd(memfd.get(), Bytes{bytes}, GuestOffset{0}, PROT_READ | PROT_WRITE,
                               MAP_SHARED);
  }
  if (!guest) return -1;
  const bool real_gmem = kind == Memory::kGuestMemfdKvm;
  const bool gmem =
      kind == Memory::kGuestMemfdShape || kind == Memory::kGuestMemfdShapeMapping || real_gmem;
  const bool minor = kind == Memory::kMemfdMinor || gmem;
  std::uint64_t features = (kind == Memory::kAnon ? 0
                            : huge                ? UFFD_FEATURE_MISSING_HUGETLBFS
                                                  : UFFD_FEATURE_MISSING_SHMEM) |
                           (minor ? UFFD_FEATURE_MINOR_SHMEM : 0);
  auto uffd = sys::Uffd::open(features);
  if (!uffd) return -1;
  // This kernel refuses the registration on a guest_memfd: its faults come as FaultRequests.
  if (!real_gmem && !uffd->registerRange(guest->address(), guest->size(),
                                         minor ? sys::RegisterMode::kMissingAndMinor
                                               : sys::RegisterMode::kMissing)) {
    return -1;
  }
  auto layout = agent::GuestLayout::fromMappings({{.base_host_virt_addr = guest->address().value,
                                                   .size = bytes,
                                                   .offset = 0,
                                                   .page_size = page}});
  if (!layout) return -1;
  agent::GuestMemoryView view;
  if (minor) {
    if (gmem) {
      bitmap_fd = *sys::createMemfd("bitmap", Bytes{Bitmap::wordsFor(bytes / page) * 8});
    }
    auto v =
        agent::GuestMemoryView::map(memfd, bytes, page, bitmap_fd.valid() ? &bitmap_fd : nullptr,
                                    kind != Memory::kGuestMemfdShapeMapping && !real_gmem);
    if (!v) return -1;
    view = std::move(*v);
    if (bitmap_fd.valid()) {
      auto b = sys::Mapping::ofFd(bitmap_fd.get(), Bytes{Bitmap::wordsFor(bytes / page) * 8},
                                  GuestOffset{0}, PROT_READ | PROT_WRITE, MAP_SHARED);
      std::memset(b->data(), 0xff, b->size().value);
    }
  }
  store::PageMap pages(bytes / page);
  agent::PageInstaller installer(*uffd, *layout, pages,
                                 kind == Memory::kMemfdMinor ? PopulationPath::kShmemMinorContinue
                                 : gmem                      ? PopulationPath::kGuestMemfd
                                                             : PopulationPath::kUffdCopy,
                                 minor ? &view : nullptr);
  const std::uint64_t batch = std::max<std::uint64_t>(1, (256 << 10) / page);
  std::vector<std::byte> src(batch * page, std::byte{0x5a});
  auto t0 = Clock::now();
  for (std::uint64_t p = 0; p < bytes / page; p += batch) {
    auto r = installer.install(PageIndex{p}, std::min(batch, bytes / page - p), src.data(), {},
                               /*fault_thread=*/false);
    if (!r) return -1;
  }
  double s = std::chrono::duration<double>(Clock::now() - t0).count();
  return static_cast<double>(bytes) / (1 << 20) / s;
}

// The median of `runs` rates from `once` (MiB/s; <= 0 when the memory could not be had), or,
// when no run got its memory, `note` saying why.
template <class Once>
PathRate medianRate(std::string name, int runs, Once once, std::string note) {
  std::vector<double> rates;
  for (int i = 0; i < runs; ++i) {
    if (double r = once(); r > 0) rates.push_back(r);
  }
  PathRate pr{std::move(name)};
  if (rates.empty()) {
    pr.note = std::move(note);
    return pr;
  }
  std::sort(rates.begin(), rates.end());
  pr.mib_s = rates[rates.size() / 2];
  pr.ran = true;
  return pr;
}

}  // namespace

std::vector<PathRate> populationPathRates(std::size_t bytes, int runs) {
  const std::pair<Memory, const char*> kinds[] = {
      {Memory::kAnon, "uffd_copy (anonymous)"},
      {Memory::kMemfd, "uffd_copy (memfd, missing mode)"},
      {Memory::kMemfdMinor, "shmem_minor_continue (memfd, pwrite)"},
      {Memory::kGuestMemfdShape, "guest_memfd_write (memfd stand-in, pwrite)"},
      {Memory::kGuestMemfdShapeMapping, "guest_memfd_mmap (memfd stand-in, mapping)"},
      {Memory::kGuestMemfdKvm, "guest_memfd_mmap (guest_memfd from /dev/kvm)"},
      {Memory::kHugetlb, "uffd_copy (hugetlbfs, 2 MiB pages)"},
  };
  std::vector<PathRate> out;
  for (auto [kind, name] : kinds) {
    out.push_back(medianRate(
        name, runs, [&, kind = kind] { return installOnce(kind, bytes); },
        kind == Memory::kHugetlb ? "no free 2 MiB huge pages (raise /proc/sys/vm/nr_hugepages)"
        : kind == Memory::kGuestMemfdKvm ? "no guest_memfd: /dev/kvm unavailable"
                                         : "could not set up the memory"));
  }
  return out;
}

namespace {

// A fresh memfd or guest_memfd of `bytes` filled with non-zero pages, as a paused VM's memory.
Result<sys::UniqueFd> filledGuestMemory(bool guest_memfd, std::size_t bytes) {
  auto fd = guest_memfd ? sys::createMappableGuestMemfd(Bytes{bytes})
                        : sys::createMemfd("bench-source", Bytes{bytes});
  if (!fd) return fd;
  auto map = sys::Mapping::ofFd(fd->get(), Bytes{bytes}, GuestOffset{0}, PROT_READ | PROT_WRITE,
                                MAP_SHARED);
  if (!map) return std::unexpected(map.error());
  std::memset(map->data(), 0x5a, bytes);
  return fd;
}

double readOnce(bool guest_memfd, bool prefault, std::size_t bytes) {
  auto fd = filledGuestMemory(guest_memfd, bytes);
  if (!fd) return -1;
  vmm::Handshake h;
  h.kind = vmm::HandshakeKind::kClassic;
  h.page_size = 4096;
  h.total_bytes = bytes;
  h.uffd = std::move(*fd);
  auto mem = agent::SourceMemory::fromHandover(std::move(h));
  if (!mem) return -1;
  constexpr std::uint64_t kRun = 64;  // the bulk stream's default batch
  std::uint64_t data_pages = 0;
  auto t0 = Clock::now();
  for (std::uint64_t p = 0; p < (*mem)->pageCount(); p += kRun) {
    const std::uint64_t n = std::min(kRun, (*mem)->pageCount() - p);
    if (prefault) (*mem)->prefault(p, n);
    for (std::uint64_t q = p; q < p + n; ++q) data_pages += !(*mem)->isZero(q);
  }
  double s = std::chrono::duration<double>(Clock::now() - t0).count();
  if (data_pages != (*mem)->pageCount()) return -1;
  return static_cast<double>(bytes) / (1 << 20) / s;
}

}  // namespace

std::vector<PathRate> sourceReadRates(std::size_t bytes, int runs) {
  std::vector<PathRate> out;
  for (bool gmem : {false, true}) {
    for (bool prefault : {false, true}) {
      out.push_back(medianRate(
          std::string(gmem ? "guest_memfd" : "memfd") +
              (prefault ? ", MADV_POPULATE_READ per run" : ", faulting page by page"),
          runs, [&] { return readOnce(gmem, prefault, bytes); },
          gmem ? "no guest_memfd: /dev/kvm unavailable" : "could not set up the memory"));
    }
  }
  return out;
}

}  // namespace lazymig::bench
