#include "sys/kvm_vcpu.h"

#include <linux/kvm.h>
#include <sys/ioctl.h>

#include <cerrno>
#include <cstring>
#include <memory>
#include <vector>

namespace lazymig::sys {
namespace {

constexpr std::uint64_t kCr0Pe = 1ull << 0;
constexpr std::uint64_t kCr0Et = 1ull << 4;
constexpr std::uint64_t kCr0Ne = 1ull << 5;
constexpr std::uint64_t kCr0Pg = 1ull << 31;
constexpr std::uint64_t kCr4Pae = 1ull << 5;
constexpr std::uint64_t kEferLme = 1ull << 8;
constexpr std::uint64_t kEferLma = 1ull << 10;

// kvm_cpuid2 with room for every leaf KVM reports; grown once if KVM asks for more (E2BIG).
struct CpuidTable {
  std::unique_ptr<std::byte[]> storage;
  kvm_cpuid2* table = nullptr;
};

Result<CpuidTable> supportedCpuid(const KvmVm& vm) {
  for (std::uint32_t n = 128; n <= 1024; n *= 2) {
    CpuidTable t;
    t.storage = std::make_unique<std::byte[]>(sizeof(kvm_cpuid2) + n * sizeof(kvm_cpuid_entry2));
    t.table = reinterpret_cast<kvm_cpuid2*>(t.storage.get());
    t.table->nent = n;
    if (::ioctl(vm.systemFd(), KVM_GET_SUPPORTED_CPUID, t.table) == 0) return t;
    if (errno != E2BIG) return failSys("KVM_GET_SUPPORTED_CPUID", "/dev/kvm");
  }
  return fail(Errc::kUnsupported, "KVM_GET_SUPPORTED_CPUID", "more than 1024 CPUID leaves");
}

kvm_segment flatSegment(std::uint16_t selector, std::uint8_t type, bool code) {
  kvm_segment s{};
  s.base = 0;
  s.limit = 0xffffffff;
  s.selector = selector;
  s.type = type;
  s.present = 1;
  s.dpl = 0;
  s.db = code ? 0 : 1;  // a 64-bit code segment has L=1 and D=0
  s.s = 1;
  s.l = code ? 1 : 0;
  s.g = 1;
  return s;
}

}  // namespace

Result<KvmVcpu> KvmVcpu::create(const KvmVm& vm, unsigned id) {
  auto fd = vm.createVcpuFd(id);
  if (!fd) return std::unexpected(fd.error());
  auto size = vm.vcpuMmapSize();
  if (!size) return std::unexpected(size.error());
  auto run =
      Mapping::ofFd(fd->get(), Bytes{*size}, GuestOffset{0}, PROT_READ | PROT_WRITE, MAP_SHARED);
  if (!run) return std::unexpected(run.error());
  return KvmVcpu(std::move(*fd), std::move(*run), id);
}

Status KvmVcpu::enterLongMode(const KvmVm& vm, const LongModeEntry& entry) {
  const std::string who = "vCPU " + std::to_string(id_);
  // A KVM that reports no CPUID (the paravirtual KVM here answers EINVAL) runs long mode with
  // the vCPU's default CPUID; one that reports it needs it set for EFER.LME to be accepted.
  if (auto cpuid = supportedCpuid(vm)) {
    for (std::uint32_t i = 0; i < cpuid->table->nent; ++i) {
      // Leaf 1 EBX[31:24] is the initial APIC id: each vCPU its own.
      kvm_cpuid_entry2& e = cpuid->table->entries[i];
      if (e.function == 1) e.ebx = (e.ebx & 0x00ffffff) | (id_ << 24);
    }
    if (::ioctl(fd_.get(), KVM_SET_CPUID2, cpuid->table) != 0)
      return failSys("KVM_SET_CPUID2", who);
  }
  kvm_sregs sregs{};
  if (::ioctl(fd_.get(), KVM_GET_SREGS, &sregs) != 0) return failSys("KVM_GET_SREGS", who);
  sregs.cs = flatSegment(0x8, 11, true);  // execute/read, accessed
  sregs.ds = sregs.es = sregs.fs = sregs.gs = sregs.ss = flatSegment(0x10, 3, false);
  sregs.cr3 = entry.cr3;
  sregs.cr4 = kCr4Pae;
  sregs.cr0 = kCr0Pe | kCr0Et | kCr0Ne | kCr0Pg;
  sregs.efer = kEferLme | kEferLma;
  if (::ioctl(fd_.get(), KVM_SET_SREGS, &sregs) != 0) return failSys("KVM_SET_SREGS", who);
  kvm_regs regs{};
  regs.rflags = 2;  // bit 1 is reserved and must be set
  regs.rip = entry.rip;
  regs.rsp = entry.rsp;
  regs.rdi = entry.rdi;
  if (::ioctl(fd_.get(), KVM_SET_REGS, &regs) != 0) return failSys("KVM_SET_REGS", who);
  return {};
}

Result<VcpuExit> KvmVcpu::run() {
  while (::ioctl(fd_.get(), KVM_RUN, 0) != 0) {
    if (errno != EINTR && errno != EAGAIN) return failSys("KVM_RUN", "vCPU " + std::to_string(id_));
  }
  const auto* r = reinterpret_cast<const kvm_run*>(run_.data());
  VcpuExit exit;
  exit.reason = r->exit_reason;
  if (r->exit_reason == KVM_EXIT_HLT) {
    exit.kind = VcpuExit::Kind::kHalt;
  } else if (r->exit_reason == KVM_EXIT_IO && r->io.direction == KVM_EXIT_IO_OUT &&
             r->io.size <= 4 && r->io.count == 1) {
    exit.kind = VcpuExit::Kind::kPortOut;
    exit.port = r->io.port;
    std::memcpy(&exit.value, run_.data() + r->io.data_offset, r->io.size);
  }
  return exit;
}

Result<std::uint64_t> KvmVcpu::tscKhz() const {
  int khz = ::ioctl(fd_.get(), KVM_GET_TSC_KHZ, 0);
  if (khz <= 0) return failSys("KVM_GET_TSC_KHZ", "vCPU " + std::to_string(id_));
  return static_cast<std::uint64_t>(khz);
}

bool kvmOffers1GiBPages(const KvmVm& vm) {
  auto cpuid = supportedCpuid(vm);
  if (!cpuid) return false;
  for (std::uint32_t i = 0; i < cpuid->table->nent; ++i) {
    const kvm_cpuid_entry2& e = cpuid->table->entries[i];
    if (e.function == 0x80000001) return (e.edx & (1u << 26)) != 0;
  }
  return false;
}

}  // namespace lazymig::sys
