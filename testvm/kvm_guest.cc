#include "testvm/kvm_guest.h"

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cmath>
#include <thread>

namespace lazymig::testvm {
namespace {

using Clock = std::chrono::steady_clock;

// Accesses between the guest's progress reports: a port exit costs about as much as a dozen
// guest instructions here, so one in 16 page visits keeps them under a few percent.
constexpr std::uint64_t kProgressEvery = 16;

Bytes bitmapSlotBytes(const sys::Mapping& m) {
  return Bytes{(m.size().value + 4095) / 4096 * 4096};
}

Error vcpuError(unsigned vcpu, const std::string& what) {
  return Error::make(Errc::kState, "vCPU " + std::to_string(vcpu), what);
}

struct VcpuOutcome {
  std::vector<std::pair<std::uint64_t, std::uint64_t>> progress;  // ns since start, accesses
  std::vector<std::pair<std::uint64_t, std::uint64_t>> stamps;    // page, generation
  std::vector<std::uint64_t> mismatches;                          // pages
  std::uint64_t done = 0;
  std::uint64_t reported = 0;  // accesses added to the shared progress count
  std::optional<Error> error;
};

// Runs the vCPU until the guest program reports done, serving its port exits.
void serveVcpu(sys::KvmVcpu& vcpu, FaultChannel* channel, Clock::time_point t0,
               std::atomic<std::uint64_t>& progress, VcpuOutcome& out) {
  std::uint64_t& reported = out.reported;
  std::uint64_t generation = 0;
  for (;;) {
    auto exit = vcpu.run();
    if (!exit) {
      out.error = exit.error();
      return;
    }
    if (exit->kind != sys::VcpuExit::Kind::kPortOut) {
      out.error = vcpuError(vcpu.id(), exit->kind == sys::VcpuExit::Kind::kHalt
                                           ? "halted before reporting done"
                                           : "exit reason " + std::to_string(exit->reason) +
                                                 ", which the test VM does not emulate");
      return;
    }
    const std::uint64_t value = exit->value;
    switch (exit->port) {
      case kPortProgress:
        out.progress.emplace_back((Clock::now() - t0).count(), value);
        progress.fetch_add(value - reported, std::memory_order_relaxed);
        reported = value;
        break;
      case kPortMismatch:
        out.mismatches.push_back(value);
        break;
      case kPortUserfault:
        if (channel == nullptr) {
          out.error = vcpuError(vcpu.id(), "userfault exit without a userfault bitmap");
          return;
        }
        channel->beforeAccess(vcpu.id(), value);
        break;
      case kPortStamp:
        out.stamps.emplace_back(value, ++generation);
        break;
      case kPortDone:
        out.progress.emplace_back((Clock::now() - t0).count(), value);
        progress.fetch_add(value - reported, std::memory_order_relaxed);
        out.done = value;
        return;
      default:
        out.error = vcpuError(vcpu.id(), "wrote unknown port " + std::to_string(exit->port));
        return;
    }
  }
}

// All vCPUs' progress reports merged into one series of (ns, accesses done by all).
std::vector<std::pair<std::uint64_t, std::uint64_t>> mergeProgress(
    const std::vector<VcpuOutcome>& outcomes) {
  std::vector<std::pair<std::uint64_t, std::uint64_t>> deltas;
  for (const auto& o : outcomes) {
    std::uint64_t before = 0;
    for (auto [t, n] : o.progress) {
      deltas.emplace_back(t, n - before);
      before = n;
    }
  }
  std::sort(deltas.begin(), deltas.end());
  std::uint64_t total = 0;
  for (auto& [t, n] : deltas) n = total += n;
  return deltas;
}

}  // namespace

Status probeKvmGuest() {
  auto vm = sys::KvmVm::open();
  if (!vm) return std::unexpected(vm.error());
  auto control = ControlMemory::create(GuestLayoutSpec{.vcpus = 1, .accesses = 0});
  if (!control) return std::unexpected(control.error());
  if (auto ok = vm->setMemslot(0, control->gpa(), control->mapping().size(),
                               control->mapping().address());
      !ok)
    return ok;
  control->params(0) = GuestParams{.pages = 1, .accesses = 0, .progress_every = 1};
  auto vcpu = sys::KvmVcpu::create(*vm, 0);
  if (!vcpu) return std::unexpected(vcpu.error());
  if (auto ok = vcpu->enterLongMode(*vm, {.cr3 = control->cr3(),
                                          .rip = control->entry(),
                                          .rsp = control->paramsGpa(0) + 4096,
                                          .rdi = control->paramsGpa(0)});
      !ok)
    return ok;
  auto exit = vcpu->run();
  if (!exit) return std::unexpected(exit.error());
  if (exit->kind != sys::VcpuExit::Kind::kPortOut || exit->port != kPortDone) {
    return fail(Errc::kUnsupported, "KVM_RUN",
                "the probe guest did not report done (exit reason " + std::to_string(exit->reason) +
                    "): long mode does not run here");
  }
  return {};
}

Result<std::unique_ptr<KvmGuest>> KvmGuest::create(const GuestMemory& memory,
                                                   const UserfaultBitmap* bitmap,
                                                   const WorkloadOptions& options) {
  std::unique_ptr<KvmGuest> g(new KvmGuest(memory, bitmap, options));
  if (const sys::KvmVm* own = memory.kvmVm()) {
    g->vm_ = own;  // a guest_memfd memslot must be on the guest_memfd's VM
  } else {
    auto vm = sys::KvmVm::open();
    if (!vm) return std::unexpected(vm.error());
    g->own_vm_.emplace(std::move(*vm));
    g->vm_ = &*g->own_vm_;
  }
  // guest_memfd regions sit where the handshake's gpa_start says; other kinds from 0.
  g->mem_base_ = memory.gpaOf(0).value_or(0);
  GuestLayoutSpec spec{.mem_base = g->mem_base_,
                       .mem_bytes = memory.bytes(),
                       .bitmap_bytes = bitmap ? bitmapSlotBytes(bitmap->mapping()).value : 0,
                       .vcpus = options.vcpus,
                       .accesses = options.accesses,
                       .gib_pages = sys::kvmOffers1GiBPages(*g->vm_)};
  auto control = ControlMemory::create(spec);
  if (!control) return std::unexpected(control.error());
  g->control_ = std::move(*control);
  if (auto ok = g->addMemslots(); !ok) return std::unexpected(ok.error());
  g->writeParams();
  for (unsigned v = 0; v < options.vcpus; ++v) {
    auto vcpu = sys::KvmVcpu::create(*g->vm_, v);
    if (!vcpu) return std::unexpected(vcpu.error());
    g->vcpus_.push_back(std::move(*vcpu));
  }
  if (!g->vcpus_.empty()) {
    auto khz = g->vcpus_.front().tscKhz();
    if (!khz) return std::unexpected(khz.error());
    g->tsc_khz_ = *khz;
  }
  return g;
}

Status KvmGuest::addMemslots() {
  const auto regions = memory_.mappings();
  std::uint32_t slot = 0;
  const bool guest_memfd = memory_.guestMemfdBacking() == "kvm";
  if (guest_memfd) {
    // KVM maps these pages from the guest_memfd itself, not through the VMM's mapping: a vCPU
    // never reaches the uffd on this memory, which is why KVM userfault (and its emulation,
    // the guest's userfault exit) exists.
    memslot_backing_ = "guest_memfd";
    for (const auto& r : regions) {
      auto ok = vm_->setGuestMemfdMemslot(slot, mem_base_ + r.offset, Bytes{r.size},
                                          HostAddr{r.base_host_virt_addr}, memory_.memfd().get(),
                                          GuestOffset{r.offset});
      if (!ok) {
        if (slot != 0) return ok;
        memslot_backing_ = "vmm-mapping";
        memslot_note_ = ok.error().message();
        break;
      }
      ++slot;
    }
  }
  if (memslot_backing_ == "vmm-mapping") {
    for (const auto& r : regions) {
      if (auto ok = vm_->setMemslot(slot++, mem_base_ + r.offset, Bytes{r.size},
                                    HostAddr{r.base_host_virt_addr});
          !ok)
        return ok;
    }
  }
  if (bitmap_ != nullptr) {
    // A memslot is whole pages; the bitmap's mapping is too, past the bitmap's own bytes.
    const auto& m = bitmap_->mapping();
    if (auto ok = vm_->setMemslot(slot++, control_.bitmapGpa(), bitmapSlotBytes(m), m.address());
        !ok)
      return ok;
  }
  return vm_->setMemslot(slot, control_.gpa(), control_.mapping().size(),
                         control_.mapping().address());
}

void KvmGuest::writeParams() {
  const std::uint64_t pages = memory_.pageCount();
  const WorkloadOptions& o = options_;
  const bool balloon = o.balloon && memory_.kind() == MemoryKind::kAnonymous;
  const std::uint64_t limit = balloon ? std::max<std::uint64_t>(1, pages * 7 / 8) : pages;
  const std::uint64_t slice = std::max<std::uint64_t>(1, pages / o.vcpus);
  const std::uint64_t hot_count = std::max<std::uint64_t>(1, pages / 10);
  for (unsigned v = 0; v < o.vcpus; ++v) {
    control_.params(v) =
        GuestParams{.mem_base = mem_base_,
                    .pages = pages,
                    .pattern = static_cast<std::uint64_t>(o.pattern),
                    .accesses = o.accesses,
                    .vcpu = v,
                    .vcpus = o.vcpus,
                    .seed = o.seed,
                    .zero_threshold = static_cast<std::uint64_t>(std::ceil(o.zero_ratio * 1e6)),
                    .slice_start = std::min(pages - 1, v * slice),
                    .slice_len = slice,
                    .hot_start = mix64(o.seed) % (pages - hot_count + 1),
                    .hot_count = hot_count,
                    .read_limit = limit,
                    .write_limit = limit,
                    .bitmap = bitmap_ ? control_.bitmapGpa() : 0,
                    .latency_log = control_.latencyLogGpa(v),
                    .random_state = mix64(o.seed * 1000 + v),
                    .progress_every = kProgressEvery,
                    .seed_times_31 = o.seed * 31,
                    .select = 0};
  }
}

Status KvmGuest::enterProgram() {
  for (unsigned v = 0; v < vcpus_.size(); ++v) {
    if (auto ok = vcpus_[v].enterLongMode(*vm_, {.cr3 = control_.cr3(),
                                                 .rip = control_.entry(),
                                                 .rsp = control_.paramsGpa(v) + 4096,
                                                 .rdi = control_.paramsGpa(v)});
        !ok)
      return ok;
  }
  return {};
}

Result<WorkloadResult> KvmGuest::run(FaultChannel* channel, bool balloon) {
  if (auto ok = enterProgram(); !ok) return std::unexpected(ok.error());
  WorkloadResult result;
  result.vcpu_kind = "kvm";
  result.ballooned.assign(memory_.pageCount(), false);
  std::vector<VcpuOutcome> outcomes(vcpus_.size());
  std::atomic<std::uint64_t> progress{0};
  const auto t0 = Clock::now();
  std::vector<std::thread> threads;
  for (std::size_t v = 0; v < vcpus_.size(); ++v) {
    threads.emplace_back([&, v] {
      serveVcpu(vcpus_[v], channel, t0, progress, outcomes[v]);
      // A vCPU that failed still counts as finished, so the balloon does not wait for it.
      progress.fetch_add(options_.accesses - outcomes[v].reported, std::memory_order_relaxed);
    });
  }
  if (balloon && memory_.kind() == MemoryKind::kAnonymous) {
    threads.emplace_back([&] { runBalloon(memory_, options_, progress, result.ballooned); });
  }
  for (auto& t : threads) t.join();
  result.seconds = std::chrono::duration<double>(Clock::now() - t0).count();
  for (std::size_t v = 0; v < outcomes.size(); ++v) {
    const VcpuOutcome& o = outcomes[v];
    if (o.error) return std::unexpected(*o.error);
    for (std::uint64_t ticks : control_.latencyLog(static_cast<unsigned>(v), o.done)) {
      result.latencies_ns.push_back(ticks * 1'000'000 / tsc_khz_);
    }
    for (auto [page, gen] : o.stamps) result.stamps[page] = gen;
    result.writes += o.stamps.size();
    result.guest_mismatches += o.mismatches.size();
    for (std::uint64_t page : o.mismatches) {
      if (result.guest_mismatch_pages.size() < 8) result.guest_mismatch_pages.push_back(page);
    }
  }
  result.accesses = result.latencies_ns.size();
  result.guest_checked_reads = result.accesses - result.writes;
  result.progress = mergeProgress(outcomes);
  result.ballooned_pages = static_cast<std::uint64_t>(
      std::count(result.ballooned.begin(), result.ballooned.end(), true));
  return result;
}

}  // namespace lazymig::testvm
