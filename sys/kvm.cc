#include "sys/kvm.h"

#include <fcntl.h>
#include <linux/kvm.h>
#include <sys/ioctl.h>
#include <unistd.h>

#include <cerrno>
#include <cstdio>
#include <string>
#include <string_view>

namespace lazymig::sys {
namespace {

// struct kvm_create_guest_memfd, as the kernel defines it (Linux 6.8+).
struct CreateGuestMemfd {
  std::uint64_t size;
  std::uint64_t flags;
  std::uint64_t reserved[6];
};
static_assert(sizeof(CreateGuestMemfd) == 64);

constexpr unsigned long kIoctlCreateGuestMemfd = _IOWR(KVMIO, 0xd4, CreateGuestMemfd);

// struct kvm_userspace_memory_region2 (Linux 6.8+), which Debian 12's headers lack.
struct MemoryRegion2 {
  std::uint32_t slot;
  std::uint32_t flags;
  std::uint64_t guest_phys_addr;
  std::uint64_t memory_size;
  std::uint64_t userspace_addr;
  std::uint64_t guest_memfd_offset;
  std::uint32_t guest_memfd;
  std::uint32_t pad1;
  std::uint64_t pad2[14];
};
static_assert(sizeof(MemoryRegion2) == 160);
constexpr unsigned long kIoctlSetMemoryRegion2 = _IOW(KVMIO, 0x49, MemoryRegion2);
constexpr std::uint32_t kMemGuestMemfd = 1u << 2;  // KVM_MEM_GUEST_MEMFD

constexpr const char* kDevice = "/dev/kvm";

std::string hex(std::uint64_t v) {
  char b[24];
  std::snprintf(b, sizeof b, "0x%llx", static_cast<unsigned long long>(v));
  return b;
}

}  // namespace

Result<KvmVm> KvmVm::open() {
  UniqueFd kvm(::open(kDevice, O_RDWR | O_CLOEXEC));
  if (!kvm) {
    int err = errno;
    std::string why = kDevice;
    if (err == ENOENT || err == ENODEV || err == ENXIO) {
      why += " (no KVM on this host)";
    } else if (err == EACCES || err == EPERM) {
      why += " (this user may not use KVM: join the kvm group or run as root)";
    }
    return failSys("open", why, err);
  }
  int api = ::ioctl(kvm.get(), KVM_GET_API_VERSION, 0);
  if (api != KVM_API_VERSION) {
    if (api < 0) return failSys("KVM_GET_API_VERSION", kDevice);
    return fail(Errc::kUnsupported, "KVM_GET_API_VERSION",
                std::string(kDevice) + " speaks API " + std::to_string(api) + ", expected " +
                    std::to_string(KVM_API_VERSION));
  }
  int vm;
  do {
    vm = ::ioctl(kvm.get(), KVM_CREATE_VM, 0);  // EINTR is documented for KVM_CREATE_VM
  } while (vm < 0 && errno == EINTR);
  if (vm < 0) return failSys("KVM_CREATE_VM", std::string(kDevice) + " type 0");
  return KvmVm(std::move(kvm), UniqueFd(vm));
}

Result<int> KvmVm::checkExtension(unsigned long cap) const {
  int r = ::ioctl(vm_.get(), KVM_CHECK_EXTENSION, cap);
  if (r < 0) return failSys("KVM_CHECK_EXTENSION", "capability " + std::to_string(cap));
  return r;
}

Result<UniqueFd> KvmVm::createGuestMemfd(Bytes size, std::uint64_t flags) const {
  CreateGuestMemfd args{};
  args.size = size.value;
  args.flags = flags;
  int fd = ::ioctl(vm_.get(), kIoctlCreateGuestMemfd, &args);
  if (fd < 0) {
    int err = errno;
    std::string what = std::to_string(size.value) + " bytes, flags " + hex(flags);
    if (err == ENOTTY) {
      what += " (this kernel has no guest_memfd: needs Linux 6.8+)";
    } else if (err == EINVAL && flags != 0) {
      what += " (flags not all supported: see KVM_CAP_GUEST_MEMFD_FLAGS)";
    }
    return failSys("KVM_CREATE_GUEST_MEMFD", what, err);
  }
  return UniqueFd(fd);
}

Status KvmVm::setMemslot(std::uint32_t slot, std::uint64_t gpa, Bytes size, HostAddr host) const {
  kvm_userspace_memory_region r{};
  r.slot = slot;
  r.guest_phys_addr = gpa;
  r.memory_size = size.value;
  r.userspace_addr = host.value;
  if (::ioctl(vm_.get(), KVM_SET_USER_MEMORY_REGION, &r) != 0) {
    return failSys("KVM_SET_USER_MEMORY_REGION", "slot " + std::to_string(slot) + " at gpa " +
                                                     hex(gpa) + ", " + std::to_string(size.value) +
                                                     " bytes");
  }
  return {};
}

Status KvmVm::setGuestMemfdMemslot(std::uint32_t slot, std::uint64_t gpa, Bytes size, HostAddr host,
                                   int guest_memfd, GuestOffset offset) const {
  MemoryRegion2 r{};
  r.slot = slot;
  r.flags = kMemGuestMemfd;
  r.guest_phys_addr = gpa;
  r.memory_size = size.value;
  r.userspace_addr = host.value;
  r.guest_memfd_offset = offset.value;
  r.guest_memfd = static_cast<std::uint32_t>(guest_memfd);
  if (::ioctl(vm_.get(), kIoctlSetMemoryRegion2, &r) != 0) {
    return failSys("KVM_SET_USER_MEMORY_REGION2",
                   "slot " + std::to_string(slot) + " backed by guest_memfd fd " +
                       std::to_string(guest_memfd) + " at offset " + hex(offset.value));
  }
  return {};
}

Result<UniqueFd> KvmVm::createVcpuFd(unsigned id) const {
  int fd = ::ioctl(vm_.get(), KVM_CREATE_VCPU, static_cast<unsigned long>(id));
  if (fd < 0) return failSys("KVM_CREATE_VCPU", "vCPU " + std::to_string(id));
  return UniqueFd(fd);
}

Result<std::size_t> KvmVm::vcpuMmapSize() const {
  int n = ::ioctl(kvm_.get(), KVM_GET_VCPU_MMAP_SIZE, 0);
  if (n <= 0) return failSys("KVM_GET_VCPU_MMAP_SIZE", kDevice);
  return static_cast<std::size_t>(n);
}

Result<UniqueFd> createMappableGuestMemfd(Bytes size) {
  auto vm = KvmVm::open();
  if (!vm) return std::unexpected(vm.error());
  return vm->createGuestMemfd(size, kGuestMemfdFlagMmap | kGuestMemfdFlagInitShared);
}

bool isGuestMemfd(int fd) {
  char target[64];
  std::string link = "/proc/self/fd/" + std::to_string(fd);
  ssize_t n = ::readlink(link.c_str(), target, sizeof target);
  if (n < 0 || static_cast<std::size_t>(n) >= sizeof target) return false;
  return std::string_view(target, static_cast<std::size_t>(n)) == "anon_inode:[kvm-gmem]";
}

}  // namespace lazymig::sys
