#include "agent/destination/population/memory_capabilities.h"

#include <linux/userfaultfd.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>
#include <mutex>

#include "agent/destination/population/guest_memory_view.h"
#include "sys/kvm.h"
#include "sys/mapping.h"
#include "sys/memory_fd.h"
#include "sys/uffd.h"

namespace lazymig::agent {
namespace {

using Answer = Capability::Answer;

Capability yes(std::string detail) { return {Answer::kYes, std::move(detail)}; }
Capability no(std::string detail) { return {Answer::kNo, std::move(detail)}; }
Capability unknown(std::string detail) { return {Answer::kUnknown, std::move(detail)}; }

// Registers `bytes` of `fd`, mapped shared, in minor mode on a uffd of our own.
Capability probeMinor(const sys::UniqueFd& fd, std::uint64_t bytes, std::uint64_t feature,
                      const char* feature_name) {
  auto uffd = sys::Uffd::open(feature);
  if (!uffd) {
    return no(std::string("this kernel lacks ") + feature_name + " (" + uffd.error().message() +
              ")");
  }
  auto map = sys::Mapping::ofFd(fd.get(), Bytes{bytes}, GuestOffset{0}, PROT_READ | PROT_WRITE,
                                MAP_SHARED | MAP_NORESERVE);
  if (!map) return unknown("could not map memory to try it on: " + map.error().message());
  auto reg = uffd->registerRange(map->address(), map->size(), sys::RegisterMode::kMinor);
  if (!reg) return no("UFFDIO_REGISTER in minor mode refused: " + reg.error().message());
  if ((*reg & (std::uint64_t{1} << _UFFDIO_CONTINUE)) == 0) {
    return no("UFFDIO_CONTINUE is not offered on the registered range");
  }
  return yes(std::string(feature_name) + ", UFFDIO_CONTINUE offered");
}

void probeGuestMemfd(MemoryCapabilities& caps) {
  auto vm = sys::KvmVm::open();
  if (!vm) {
    std::string why = "not probed: " + vm.error().message();
    caps.guest_memfd_mmap = unknown(why);
    caps.guest_memfd_write = unknown(why);
    caps.uffd_on_guest_memfd = unknown(why);
    return;
  }
  constexpr std::uint64_t kBytes = std::uint64_t{2} * 4096;
  auto gmem = vm->createGuestMemfd(Bytes{kBytes},
                                   sys::kGuestMemfdFlagMmap | sys::kGuestMemfdFlagInitShared);
  if (!gmem) {
    std::string why =
        "KVM_CREATE_GUEST_MEMFD with MMAP | INIT_SHARED failed: " + gmem.error().message();
    caps.guest_memfd_mmap = no(why);
    caps.guest_memfd_write = unknown("not probed: " + why);
    caps.uffd_on_guest_memfd = unknown("not probed: " + why);
    return;
  }
  // A zero-length pwrite touches no page: it says only whether the file can be written.
  if (::pwrite(gmem->get(), "", 0, 0) == 0) {
    caps.guest_memfd_write = yes("pwrite accepted (GUEST_MEMFD_FLAG_WRITE kernels)");
  } else {
    caps.guest_memfd_write = no(std::string("pwrite on a guest_memfd: ") + std::strerror(errno));
  }
  auto map = sys::Mapping::ofFd(gmem->get(), Bytes{kBytes}, GuestOffset{0}, PROT_READ | PROT_WRITE,
                                MAP_SHARED);
  if (!map) {
    caps.guest_memfd_mmap = no("mmap of a guest_memfd: " + map.error().message());
    caps.uffd_on_guest_memfd = unknown("not probed: no mapping to register");
    return;
  }
  caps.guest_memfd_mmap = yes("mmap MAP_SHARED read/write of a guest_memfd");
  auto uffd = sys::Uffd::open(UFFD_FEATURE_MISSING_SHMEM | UFFD_FEATURE_MINOR_SHMEM);
  if (!uffd) {
    caps.uffd_on_guest_memfd = no("no uffd with minor shmem faults: " + uffd.error().message());
    return;
  }
  auto reg = uffd->registerRange(map->address(), map->size(), sys::RegisterMode::kMissingAndMinor);
  caps.uffd_on_guest_memfd =
      reg ? yes("UFFDIO_REGISTER MISSING | MINOR on a guest_memfd mapping accepted")
          : no("refused on a guest_memfd mapping: " + reg.error().message() +
               " (vCPU faults come only as FaultRequests)");
}

MemoryCapabilities probe() {
  MemoryCapabilities caps;
  if (auto fd = sys::createMemfd("lazymig-probe", Bytes{4096})) {
    caps.uffd_minor_shmem =
        probeMinor(*fd, 4096, UFFD_FEATURE_MINOR_SHMEM, "UFFD_FEATURE_MINOR_SHMEM");
  } else {
    caps.uffd_minor_shmem = unknown("memfd_create: " + fd.error().message());
  }
  constexpr std::uint64_t kHuge = 2ull << 20;
  if (auto fd = sys::createMemfd("lazymig-probe-huge", Bytes{kHuge}, /*huge=*/true)) {
    caps.uffd_minor_hugetlbfs =
        probeMinor(*fd, kHuge, UFFD_FEATURE_MINOR_HUGETLBFS, "UFFD_FEATURE_MINOR_HUGETLBFS");
  } else {
    caps.uffd_minor_hugetlbfs = unknown("no hugetlbfs memfd: " + fd.error().message());
  }
  probeGuestMemfd(caps);
  return caps;
}

nlohmann::json toJson(const Capability& c) {
  const char* a = c.answer == Answer::kYes ? "yes" : c.answer == Answer::kNo ? "no" : "unknown";
  return {{"supported", a}, {"detail", c.detail}};
}

}  // namespace

nlohmann::json MemoryCapabilities::toJson() const {
  return {{"uffd_minor_shmem", agent::toJson(uffd_minor_shmem)},
          {"uffd_minor_hugetlbfs", agent::toJson(uffd_minor_hugetlbfs)},
          {"guest_memfd_mmap", agent::toJson(guest_memfd_mmap)},
          {"guest_memfd_write", agent::toJson(guest_memfd_write)},
          {"uffd_on_guest_memfd", agent::toJson(uffd_on_guest_memfd)}};
}

const MemoryCapabilities& kernelCapabilities() {
  static const MemoryCapabilities caps = probe();
  return caps;
}

Result<PopulationChoice> choosePopulation(const vmm::Handshake& h, const MemoryCapabilities& caps) {
  PopulationChoice c;
  switch (h.kind) {
    case vmm::HandshakeKind::kClassic:
      c.path = PopulationPath::kUffdCopy;
      c.details = {{"why", h.page_size > 4096
                               ? "the VMM registered its memory in missing mode; huge zero pages "
                                 "are copied (hugetlbfs has no UFFDIO_ZEROPAGE)"
                               : "the VMM registered its memory in missing mode"}};
      return c;
    case vmm::HandshakeKind::kSharedMinor: {
      c.backing = describeMemoryFd(h.memory.get());
      const bool huge = c.backing == "hugetlbfs";
      const Capability& minor = huge ? caps.uffd_minor_hugetlbfs : caps.uffd_minor_shmem;
      if (minor.answer == Capability::Answer::kNo) {
        return fail(
            Errc::kUnsupported, "vmm handshake",
            std::string("minor-mode population of ") + c.backing +
                " needs userfaultfd minor faults, which this kernel lacks: " + minor.detail);
      }
      c.path = PopulationPath::kShmemMinorContinue;
      c.details = {{"why",
                    "shared memory registered MISSING | MINOR: pages are written through "
                    "the agent's mapping, then UFFDIO_CONTINUE"}};
      return c;
    }
    case vmm::HandshakeKind::kGuestMemfd: {
      c.backing = describeMemoryFd(h.memory.get());
      if (h.page_size != 4096) {
        return fail(Errc::kUnsupported, "vmm handshake",
                    "guest_memfd with page_size " + std::to_string(h.page_size) +
                        ": the userfault bitmap has one bit per 4 KiB page");
      }
      // The handed-over fd itself: can it be written (a zero-length pwrite touches nothing)?
      bool writable = ::pwrite(h.memory.get(), "", 0, 0) == 0;
      c.path = PopulationPath::kGuestMemfd;
      c.details = {{"why", "pages are written through the agent's mapping of the " + c.backing +
                               ", then their userfault-bitmap bit is cleared"},
                   {"memory_fd_accepts_write", writable},
                   {"uffd_route", caps.uffd_on_guest_memfd.yes() || c.backing != "guest_memfd"
                                      ? "uffd faults are served too (UFFDIO_CONTINUE)"
                                      : "FaultRequests only: " + caps.uffd_on_guest_memfd.detail}};
      return c;
    }
  }
  return fail(Errc::kUnsupported, "vmm handshake", "unknown handshake kind");
}

}  // namespace lazymig::agent
