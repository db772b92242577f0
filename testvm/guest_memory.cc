#include "testvm/guest_memory.h"

#include <cerrno>

#include "sys/memory_fd.h"

namespace lazymig::testvm {
namespace {

constexpr std::uint64_t kSmallPage = 4096;
constexpr std::uint64_t kHugePage = 2 * kMiB;

// A huge page mapping refused for want of reserved pages: say how many are needed and where.
Error hugePagesShort(const Error& e, std::uint64_t bytes) {
  const std::uint64_t needed = bytes / kHugePage;
  std::string ctx =
      e.context + ": the guest needs " + std::to_string(needed) + " free 2 MiB huge pages";
  if (auto pool = sys::defaultHugePagePool()) {
    std::uint64_t target = pool->total + (needed > pool->free ? needed - pool->free : 0);
    ctx += " and HugePages_Free is " + std::to_string(pool->free) +
           "; raise /proc/sys/vm/nr_hugepages (as root: echo " + std::to_string(target) +
           " > /proc/sys/vm/nr_hugepages)";
  } else {
    ctx += "; raise /proc/sys/vm/nr_hugepages";
  }
  Error out = e;
  out.context = std::move(ctx);
  return out;
}

}  // namespace

Result<MemoryKind> parseMemoryKind(const std::string& name) {
  for (MemoryKind k : {MemoryKind::kAnonymous, MemoryKind::kMemfd, MemoryKind::kMemfdMinor,
                       MemoryKind::kGuestMemfd, MemoryKind::kHugetlb, MemoryKind::kHugetlbShared,
                       MemoryKind::kHugetlbMinor}) {
    if (name == memoryKindName(k)) return k;
  }
  return fail(Errc::kInvalidArgument, "--memory",
              std::string("must be one of ") + kMemoryKindNames + ", got '" + name + "'");
}

const char* memoryKindName(MemoryKind kind) {
  switch (kind) {
    case MemoryKind::kAnonymous:
      return "anon";
    case MemoryKind::kMemfd:
      return "memfd";
    case MemoryKind::kMemfdMinor:
      return "memfd-minor";
    case MemoryKind::kGuestMemfd:
      return "guest_memfd";
    case MemoryKind::kHugetlb:
      return "hugetlb";
    case MemoryKind::kHugetlbShared:
      return "hugetlb-shared";
    case MemoryKind::kHugetlbMinor:
      return "hugetlb-minor";
  }
  return "unknown";
}

bool isHugetlb(MemoryKind kind) {
  return kind == MemoryKind::kHugetlb || kind == MemoryKind::kHugetlbShared ||
         kind == MemoryKind::kHugetlbMinor;
}

bool isMinorMode(MemoryKind kind) {
  return kind == MemoryKind::kMemfdMinor || kind == MemoryKind::kHugetlbMinor;
}

bool hasMemoryFd(MemoryKind kind) {
  return kind != MemoryKind::kAnonymous && kind != MemoryKind::kHugetlb;
}

std::uint64_t handshakePageSize(MemoryKind kind) {
  return isHugetlb(kind) ? kHugePage : kSmallPage;
}

Status GuestMemory::createGuestMemfd(const GuestMemoryOptions& options) {
  auto real = [&]() -> Result<sys::UniqueFd> {
    if (options.memfd_standin) return fail(Errc::kUnsupported, "--memfd-standin", "asked for");
    auto vm = sys::KvmVm::open();
    if (!vm) return std::unexpected(vm.error());
    auto fd = vm->createGuestMemfd(Bytes{bytes_},
                                   sys::kGuestMemfdFlagMmap | sys::kGuestMemfdFlagInitShared);
    if (!fd) return std::unexpected(fd.error());
    kvm_.emplace(std::move(*vm));
    return fd;
  }();
  if (real) {
    memfd_ = std::move(*real);
    // Named by what the fd is, not by how it was asked for.
    backing_ = sys::isGuestMemfd(memfd_.get()) ? "kvm" : "unknown";
    return {};
  }
  if (options.require_kvm) {
    return fail(Errc::kUnsupported, "--require-kvm",
                "no guest_memfd from KVM: " + real.error().message());
  }
  standin_reason_ = real.error().message();
  auto fd = sys::createMemfd("lazymig-testvm-guest_memfd-standin", Bytes{bytes_});
  if (!fd) return std::unexpected(fd.error());
  memfd_ = std::move(*fd);
  backing_ = "memfd-standin";
  return {};
}

Result<GuestMemory> GuestMemory::create(MemoryKind kind, std::uint64_t bytes, unsigned regions,
                                        const GuestMemoryOptions& options) {
  const std::uint64_t unit = handshakePageSize(kind);
  if (bytes == 0 || bytes % unit != 0) {
    return fail(Errc::kInvalidArgument, "--size",
                std::string("must be a non-zero multiple of ") +
                    (unit == kHugePage ? "2 MiB (2097152 bytes)" : "4096") + " for --memory " +
                    memoryKindName(kind) + ", got " + std::to_string(bytes));
  }
  const std::uint64_t units = bytes / unit;
  if (regions == 0 || regions > units) {
    return fail(Errc::kInvalidArgument, "--regions",
                "must be from 1 to the number of " +
                    std::string(unit == kHugePage ? "2 MiB pages (" : "pages (") +
                    std::to_string(units) + ")");
  }
  GuestMemory g;
  g.kind_ = kind;
  g.bytes_ = bytes;
  switch (kind) {
    case MemoryKind::kMemfd:
    case MemoryKind::kMemfdMinor: {
      auto fd = sys::createMemfd("lazymig-testvm-guest", Bytes{bytes});
      if (!fd) return std::unexpected(fd.error());
      g.memfd_ = std::move(*fd);
      break;
    }
    case MemoryKind::kHugetlbShared:
    case MemoryKind::kHugetlbMinor: {
      auto fd = sys::createHugetlbMemfd("lazymig-testvm-guest", Bytes{bytes}, Bytes{kHugePage});
      if (!fd) return std::unexpected(fd.error());
      g.memfd_ = std::move(*fd);
      break;
    }
    case MemoryKind::kGuestMemfd:
      if (auto ok = g.createGuestMemfd(options); !ok) return std::unexpected(ok.error());
      break;
    case MemoryKind::kAnonymous:
    case MemoryKind::kHugetlb:
      break;
  }
  const std::uint64_t small_per_unit = unit / kSmallPage;
  std::uint64_t first_unit = 0;
  for (unsigned r = 0; r < regions; ++r) {
    std::uint64_t n = r + 1 == regions ? units - first_unit : units / regions;
    Bytes len{n * unit};
    GuestOffset offset{first_unit * unit};
    Result<sys::Mapping> m =
        kind == MemoryKind::kAnonymous ? sys::Mapping::anonymous(len)
        : kind == MemoryKind::kHugetlb
            ? sys::Mapping::anonymousHugetlb(len, Bytes{kHugePage})
            : sys::Mapping::ofFd(g.memfd_.get(), len, offset, PROT_READ | PROT_WRITE, MAP_SHARED);
    if (!m) {
      if (isHugetlb(kind) && m.error().sys_errno == ENOMEM) {
        return std::unexpected(hugePagesShort(m.error(), bytes));
      }
      return std::unexpected(m.error());
    }
    g.regions_.push_back(Region{std::move(*m), first_unit * small_per_unit, n * small_per_unit});
    // A PROT_NONE page between regions keeps their host ranges apart, as a VMM's are.
    auto guard =
        sys::Mapping::ofFd(-1, Bytes{4096}, GuestOffset{0}, PROT_NONE, MAP_PRIVATE | MAP_ANONYMOUS);
    if (guard) g.guards_.push_back(std::move(*guard));
    first_unit += n;
  }
  return g;
}

std::byte* GuestMemory::page(std::uint64_t index) const {
  for (const auto& r : regions_) {
    if (index >= r.first_page && index < r.first_page + r.pages) {
      return r.mapping.data() + (index - r.first_page) * 4096;
    }
  }
  return nullptr;
}

std::optional<std::uint64_t> GuestMemory::gpaOf(std::uint64_t index) const {
  if (kind_ != MemoryKind::kGuestMemfd || index >= pageCount()) return std::nullopt;
  // Regions are contiguous in the guest_memfd and in guest physical memory alike.
  return kGuestMemfdGpaBase + index * 4096;
}

bool GuestMemory::sameRegion(std::uint64_t first, std::uint64_t count) const {
  for (const auto& r : regions_) {
    if (first >= r.first_page && first < r.first_page + r.pages)
      return first + count <= r.first_page + r.pages;
  }
  return false;
}

Status GuestMemory::discard(std::uint64_t first, std::uint64_t count) const {
  for (const auto& r : regions_) {
    if (first >= r.first_page && first + count <= r.first_page + r.pages) {
      return r.mapping.advise(MADV_DONTNEED, (first - r.first_page) * 4096, count * 4096);
    }
  }
  return fail(Errc::kInvalidArgument, "discard", "range crosses a region boundary");
}

std::vector<vmm::GuestRegionMapping> GuestMemory::mappings() const {
  std::vector<vmm::GuestRegionMapping> out;
  for (const auto& r : regions_) {
    vmm::GuestRegionMapping m{.base_host_virt_addr = r.mapping.address().value,
                              .size = r.pages * 4096,
                              .offset = r.first_page * 4096,
                              .page_size = pageSize()};
    if (kind_ == MemoryKind::kGuestMemfd) {
      m.gpa_start = kGuestMemfdGpaBase + m.offset;
      m.is_guest_memfd = true;
    }
    out.push_back(m);
  }
  return out;
}

}  // namespace lazymig::testvm
