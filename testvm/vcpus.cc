#include "testvm/vcpus.h"

#include <cmath>
#include <cstdio>

namespace lazymig::testvm {

Result<Vcpus> Vcpus::choose(const GuestMemory& memory, const UserfaultBitmap* bitmap,
                            const WorkloadOptions& options, bool as_threads) {
  Vcpus v(memory, options);
  if (as_threads) {
    v.why_threads_ = "--vcpus-as-threads";
    return v;
  }
  if (auto ok = probeKvmGuest(); !ok) {
    v.why_threads_ = "KVM cannot run a guest here: " + ok.error().message();
    std::fprintf(stderr, "lazymig-testvm: %s; host threads stand in for the vCPUs\n",
                 v.why_threads_.c_str());
    return v;
  }
  auto guest = KvmGuest::create(memory, bitmap, options);
  if (!guest) return std::unexpected(guest.error());
  v.kvm_ = std::move(*guest);
  if (!v.kvm_->memslotNote().empty()) {
    std::fprintf(stderr,
                 "lazymig-testvm: KVM refused a memslot backed by the guest_memfd (%s); the "
                 "memslots map the VMM's shared mapping of it instead\n",
                 v.kvm_->memslotNote().c_str());
  }
  return v;
}

Result<WorkloadResult> Vcpus::run(FaultChannel* channel) {
  if (kvm_) return kvm_->run(channel, options_.balloon);
  WorkloadOptions o = options_;
  if (channel) {
    o.before_access = [channel](unsigned vcpu, std::uint64_t page) {
      channel->beforeAccess(vcpu, page);
    };
  }
  return runWorkload(*memory_, o);
}

Result<WorkloadResult> Vcpus::runBaseline() {
  if (kvm_) return kvm_->run(nullptr, /*balloon=*/false);
  WorkloadOptions o = options_;
  o.balloon = false;
  return runWorkload(*memory_, o);
}

void Vcpus::describe(nlohmann::ordered_json& out) const {
  out["vcpus"] = kvm_ ? "kvm" : "threads";
  out["vcpu_count"] = options_.vcpus;
  out["threads_because"] =
      why_threads_.empty() ? nlohmann::ordered_json(nullptr) : nlohmann::ordered_json(why_threads_);
  if (kvm_) {
    out["memslot_backing"] = kvm_->memslotBacking();
    out["tsc_khz"] = kvm_->tscKhz();
  }
}

std::uint64_t Vcpus::faultingThresholdNs() const {
  // A host thread touches a present page in well under a microsecond. A KVM guest's timed span
  // here is a dozen instructions at about a microsecond each under this paravirtual KVM, and
  // any fault costs far more than 50 us (a port exit alone is ~15 us).
  return kvm_ ? 50'000 : 5'000;
}

nlohmann::json guestViewJson(const WorkloadResult& work, const WorkloadResult* baseline,
                             double start_unix_ms, double completed_ms) {
  constexpr double kStepMs = 5;
  nlohmann::json out{{"start_unix_ms", std::round(start_unix_ms)},
                     {"migration_completed_ms", std::round(completed_ms * 100) / 100},
                     {"seconds", work.seconds},
                     {"accesses", work.accesses},
                     {"progress", progressJson(work, kStepMs)}};
  if (baseline) {
    out["baseline"] = {{"seconds", baseline->seconds},
                       {"accesses", baseline->accesses},
                       {"progress", progressJson(*baseline, kStepMs)}};
  }
  return out;
}

nlohmann::json progressJson(const WorkloadResult& work, double step_ms) {
  nlohmann::json out = nlohmann::json::array();
  double last_step = -1;
  for (auto [ns, n] : work.progress) {
    double ms = static_cast<double>(ns) / 1e6;
    double step = std::floor(ms / step_ms);
    if (step == last_step && !out.empty())
      out.back() = {std::round(ms * 100) / 100, n};
    else
      out.push_back({std::round(ms * 100) / 100, n});
    last_step = step;
  }
  return out;
}

}  // namespace lazymig::testvm
