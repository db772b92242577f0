#include "testvm/guest_layout.h"

#include <cstring>

#include "base/units.h"

namespace lazymig::testvm {
namespace {

constexpr std::uint64_t kPresentWritable = 0x3;
constexpr std::uint64_t kLargePage = 0x80;  // PS: a 2 MiB (PDE) or 1 GiB (PDPTE) page
constexpr std::uint64_t kHugePage = 2 * kMiB;

std::uint64_t alignUp(std::uint64_t v, std::uint64_t to) { return (v + to - 1) / to * to; }

}  // namespace

Result<ControlMemory> ControlMemory::create(const GuestLayoutSpec& spec) {
  const std::size_t program =
      static_cast<std::size_t>(lazymig_guest_program_end - lazymig_guest_program_start);
  static_assert(kPml4 - kCode == 64 * 1024);
  if (program > kPml4) {
    return fail(Errc::kInvalidArgument, "guest program",
                std::to_string(program) + " bytes, more than the 64 KiB the layout gives it");
  }
  ControlMemory c;
  const std::uint64_t mem_end = spec.mem_base + spec.mem_bytes;
  c.bitmap_gpa_ = spec.bitmap_bytes ? alignUp(mem_end, kHugePage) : 0;
  const std::uint64_t below = spec.bitmap_bytes ? c.bitmap_gpa_ + spec.bitmap_bytes : mem_end;
  c.gpa_ = alignUp(below, kGiB);
  // The control memory stays within the gigabyte it starts, so the tables reach it with one
  // more page directory; 512 GiB is what one PDPT maps.
  const std::uint64_t gib = c.gpa_ / kGiB + 1;
  if (gib > 512) {
    return fail(Errc::kInvalidArgument, "--size",
                "guest memory too large for the KVM guest's page tables (512 GiB at most)");
  }
  c.params_ = kPageDirectories + (spec.gib_pages ? 0 : gib * 4096);
  c.logs_ = c.params_ + spec.vcpus * 4096ull;
  c.log_bytes_ = alignUp(spec.accesses * 8, 4096);
  const std::uint64_t bytes = alignUp(c.logs_ + spec.vcpus * c.log_bytes_, kHugePage);
  if (bytes > kGiB) {
    return fail(Errc::kInvalidArgument, "--accesses",
                "the vCPUs' latency logs (8 bytes an access) would need more than 1 GiB");
  }
  auto m = sys::Mapping::anonymous(Bytes{bytes});
  if (!m) return std::unexpected(m.error());
  c.mapping_ = std::move(*m);
  std::memcpy(c.mapping_.data() + kCode, lazymig_guest_program_start, program);
  c.writePageTables(gib, spec.gib_pages);
  return c;
}

void ControlMemory::writePageTables(std::uint64_t gib, bool gib_pages) {
  auto* base = reinterpret_cast<std::uint64_t*>(mapping_.data());
  std::uint64_t* pml4 = base + kPml4 / 8;
  std::uint64_t* pdpt = base + kPdpt / 8;
  pml4[0] = (gpa_ + kPdpt) | kPresentWritable;
  for (std::uint64_t g = 0; g < gib; ++g) {
    if (gib_pages) {
      pdpt[g] = (g * kGiB) | kPresentWritable | kLargePage;
      continue;
    }
    const std::uint64_t pd_offset = kPageDirectories + g * 4096;
    pdpt[g] = (gpa_ + pd_offset) | kPresentWritable;
    std::uint64_t* pd = base + pd_offset / 8;
    for (std::uint64_t e = 0; e < 512; ++e) {
      pd[e] = (g * kGiB + e * kHugePage) | kPresentWritable | kLargePage;
    }
  }
}

GuestParams& ControlMemory::params(unsigned vcpu) const {
  return *reinterpret_cast<GuestParams*>(mapping_.data() + params_ + vcpu * 4096ull);
}

std::span<const std::uint64_t> ControlMemory::latencyLog(unsigned vcpu,
                                                         std::uint64_t accesses) const {
  return {reinterpret_cast<const std::uint64_t*>(mapping_.data() + logs_ + vcpu * log_bytes_),
          accesses};
}

}  // namespace lazymig::testvm
