#include "metrics/metrics.h"

#include <prometheus/counter.h>
#include <prometheus/exposer.h>
#include <prometheus/gauge.h>
#include <prometheus/histogram.h>
#include <prometheus/registry.h>
#include <prometheus/text_serializer.h>

#include <array>
#include <map>
#include <mutex>

namespace lazymig::metrics {
namespace {

using prometheus::Counter;
using prometheus::Gauge;
using prometheus::Histogram;

const Histogram::BucketBoundaries kFaultBuckets = {
    5e-6,  10e-6, 25e-6, 50e-6,  100e-6, 250e-6, 500e-6, 1e-3, 2.5e-3, 5e-3,
    10e-3, 25e-3, 50e-3, 100e-3, 250e-3, 500e-3, 1,      2.5,  5,      10};
// Phases go down to the microsecond a loopback wire half or a quick install takes.
const Histogram::BucketBoundaries kFaultPhaseBuckets = {
    1e-6, 2.5e-6, 5e-6, 10e-6, 25e-6, 50e-6, 100e-6, 250e-6, 500e-6,
    1e-3, 2.5e-3, 5e-3, 10e-3, 25e-3, 50e-3, 100e-3, 250e-3, 1};
const Histogram::BucketBoundaries kDurationBuckets = {0.1, 0.5, 1,   2.5, 5,    10,  30,
                                                      60,  120, 300, 600, 1800, 3600};
const Histogram::BucketBoundaries kCpuPerGibBuckets = {0.25, 0.5, 0.75, 1, 1.5, 2,
                                                       3,    4,   6,    8, 12,  16};
const Histogram::BucketBoundaries kStoreBuckets = {10e-6,  25e-6, 50e-6,  100e-6, 250e-6,
                                                   500e-6, 1e-3,  2.5e-3, 5e-3,   10e-3,
                                                   25e-3,  50e-3, 100e-3, 1};

// Pre-copy rounds: a round sends anything from nothing (the guest wrote nothing since the last
// scan) to a whole guest (round 1: 4 Mi pages are 16 GiB of 4 KiB pages); it lasts from a
// millisecond (a scan that found little) to a minute (round 1 of a large guest on a slow link).
const Histogram::BucketBoundaries kPrecopyPagesBuckets = {
    0, 16, 64, 256, 1024, 4096, 16384, 65536, 262144, 1048576, 4194304};
const Histogram::BucketBoundaries kPrecopyRoundBuckets = {
    1e-3, 5e-3, 10e-3, 25e-3, 50e-3, 100e-3, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60};
const Histogram::BucketBoundaries kDirtyRateBuckets = {10,    100,    1000,    10000,
                                                       50000, 100000, 1000000, 10000000};

double seconds(std::chrono::nanoseconds d) { return std::chrono::duration<double>(d).count(); }

class PrometheusMetrics final : public AgentMetrics {
 public:
  explicit PrometheusMetrics(const std::string& node)
      : registry_(std::make_shared<prometheus::Registry>()), labels_{{"node", node}} {
    auto& fault = prometheus::BuildHistogram()
                      .Name("lazymig_fault_latency_seconds")
                      .Help(
                          "Time from reading a guest page fault to the install that wakes it, by "
                          "how it was served")
                      .Labels(labels_)
                      .Register(*registry_);
    fault_[0] = &fault.Add({{"path", "network"}}, kFaultBuckets);
    fault_[1] = &fault.Add({{"path", "local"}}, kFaultBuckets);
    fault_[2] = &fault.Add({{"path", "raced"}}, kFaultBuckets);
    auto& phase = prometheus::BuildHistogram()
                      .Name("lazymig_fault_phase_seconds")
                      .Help(
                          "Where demand faults served over the network spent their time, by phase "
                          "(destination_wait + request_wire + source_wait + source_work + "
                          "reply_wire + install_wake = the fault's latency)")
                      .Labels(labels_)
                      .Register(*registry_);
    for (std::size_t i = 0; i < kFaultPhases; ++i) {
      phase_[i] = &phase.Add({{"phase", std::string(kFaultPhaseNames[i])}}, kFaultPhaseBuckets);
    }
    auto& pages = prometheus::BuildCounter()
                      .Name("lazymig_pages_total")
                      .Help("Pages installed on the destination, by how they arrived")
                      .Labels(labels_)
                      .Register(*registry_);
    pages_[0] = &pages.Add({{"path", "demand"}});
    pages_[1] = &pages.Add({{"path", "bulk"}});
    pages_[2] = &pages.Add({{"path", "zero"}});
    auto& wire = prometheus::BuildCounter()
                     .Name("lazymig_wire_bytes_total")
                     .Help("Bytes of frames sent and received between agents, by channel")
                     .Labels(labels_)
                     .Register(*registry_);
    wire_[0][0] = &wire.Add({{"channel", "urgent"}, {"direction", "sent"}});
    wire_[0][1] = &wire.Add({{"channel", "urgent"}, {"direction", "received"}});
    wire_[1][0] = &wire.Add({{"channel", "bulk"}, {"direction", "sent"}});
    wire_[1][1] = &wire.Add({{"channel", "bulk"}, {"direction", "received"}});
    remaining_ =
        &prometheus::BuildGauge()
             .Name("lazymig_pages_remaining")
             .Help("Pages not yet installed, over all destination migrations on this agent")
             .Labels(labels_)
             .Register(*registry_)
             .Add({});
    migrations_ = &prometheus::BuildGauge()
                       .Name("lazymig_migrations")
                       .Help("Migrations on this agent by state")
                       .Labels(labels_)
                       .Register(*registry_);
    duration_ = &prometheus::BuildHistogram()
                     .Name("lazymig_migration_duration_seconds")
                     .Help("Migration duration by outcome")
                     .Labels(labels_)
                     .Register(*registry_);
    auto& reconnects = prometheus::BuildCounter()
                           .Name("lazymig_reconnects_total")
                           .Help("Links to a source re-established after a loss, by channel")
                           .Labels(labels_)
                           .Register(*registry_);
    reconnects_[0] = &reconnects.Add({{"channel", "urgent"}});
    reconnects_[1] = &reconnects.Add({{"channel", "bulk"}});
    refusals_ = &prometheus::BuildCounter()
                     .Name("lazymig_refusals_total")
                     .Help("Connections and handshakes refused, by reason")
                     .Labels(labels_)
                     .Register(*registry_);
    for (auto reason : kRefusalReasons) refusals_->Add({{"reason", std::string(reason)}});
    for (auto state : kMigrationStates) migrations_->Add({{"state", std::string(state)}});
    for (auto outcome : kMigrationOutcomes) {
      duration_->Add({{"outcome", std::string(outcome)}}, kDurationBuckets);
    }
    store_ = &prometheus::BuildHistogram()
                  .Name("lazymig_store_write_seconds")
                  .Help("RocksDB write latency (page map checkpoints and records)")
                  .Labels(labels_)
                  .Register(*registry_)
                  .Add({}, kStoreBuckets);
    degraded_ = &prometheus::BuildGauge()
                     .Name("lazymig_migrations_degraded")
                     .Help(
                         "Live migrations serving from memory whose record or page-map "
                         "checkpoint cannot be persisted, by reason")
                     .Labels(labels_)
                     .Register(*registry_);
    for (auto reason : kDegradedReasons) degraded_->Add({{"reason", std::string(reason)}});
    store_writable_ = &prometheus::BuildGauge()
                           .Name("lazymig_store_writable")
                           .Help(
                               "1 while the state directory takes writes, 0 after a write "
                               "failed (new migrations are refused with 507)")
                           .Labels(labels_)
                           .Register(*registry_)
                           .Add({});
    store_writable_->Set(1);
    eexist_ =
        &prometheus::BuildCounter()
             .Name("lazymig_uffd_eexist_total")
             .Help("Installs that found the page already present (a fault raced the bulk stream)")
             .Labels(labels_)
             .Register(*registry_)
             .Add({});
    auto& precopy = prometheus::BuildCounter()
                        .Name("lazymig_precopy_destination_pages_total")
                        .Help(
                            "Pages a pre-copy destination received before the switch, by what "
                            "became of them: staged, stale_dropped, installed_from_staging")
                        .Labels(labels_)
                        .Register(*registry_);
    precopy_pages_[0] = &precopy.Add({{"event", "staged"}});
    precopy_pages_[1] = &precopy.Add({{"event", "stale_dropped"}});
    precopy_pages_[2] = &precopy.Add({{"event", "installed_from_staging"}});
    precopy_switches_ = &prometheus::BuildCounter()
                             .Name("lazymig_precopy_destination_switches_total")
                             .Help("Pre-copy switches a destination heard (StalePages with last)")
                             .Labels(labels_)
                             .Register(*registry_)
                             .Add({});
    blocked_ = &prometheus::BuildCounter()
                    .Name("lazymig_vcpu_blocked_seconds_total")
                    .Help(
                        "Time vCPUs spent blocked in page faults, summed over every fault the "
                        "agent served")
                    .Labels(labels_)
                    .Register(*registry_)
                    .Add({});
    registerCpuFamilies();
    registerPrecopySourceFamilies();
    prometheus::BuildGauge()
        .Name("lazymig_build_info")
        .Help("lazymig build information")
        .Labels(labels_)
        .Register(*registry_)
        .Add({{"version", "0.1.0"}})
        .Set(1);
  }

  Result<std::uint16_t> startExposer(const std::string& address) override {
    try {
      exposer_ = std::make_unique<prometheus::Exposer>(address, 2);
      exposer_->RegisterCollectable(registry_);
      auto ports = exposer_->GetListeningPorts();
      if (ports.empty()) return fail(Errc::kSystem, "metrics exposer", address + ": not listening");
      return static_cast<std::uint16_t>(ports.front());
    } catch (const std::exception& e) {
      return fail(Errc::kConfig, "listen.metrics", address + ": " + e.what());
    }
  }

  std::shared_ptr<prometheus::Registry> registry() const override { return registry_; }

  std::string scrapeText() const override {
    return prometheus::TextSerializer().Serialize(registry_->Collect());
  }

  void observeFault(FaultPath path, std::chrono::nanoseconds latency) override {
    fault_[static_cast<int>(path)]->Observe(seconds(latency));
    // Every path blocks the faulting vCPU until the wake, not only the network one.
    blocked_->Increment(seconds(latency));
  }
  void observeFaultPhase(FaultPhase phase, std::chrono::nanoseconds duration) override {
    phase_[static_cast<std::size_t>(phase)]->Observe(seconds(duration));
  }
  void addPages(PagePath path, std::uint64_t pages) override {
    if (pages) pages_[static_cast<int>(path)]->Increment(static_cast<double>(pages));
  }
  void addWireBytes(Channel channel, Direction direction, std::uint64_t bytes) override {
    wire_[static_cast<int>(channel)][static_cast<int>(direction)]->Increment(
        static_cast<double>(bytes));
  }
  void addPagesRemaining(std::int64_t delta) override {
    remaining_->Increment(static_cast<double>(delta));
  }
  void migrationState(std::string_view from, std::string_view to) override {
    std::lock_guard lock(mu_);
    if (!from.empty()) migrations_->Add({{"state", std::string(from)}}).Decrement();
    if (!to.empty()) migrations_->Add({{"state", std::string(to)}}).Increment();
  }
  void observeMigrationDuration(std::string_view outcome, std::chrono::nanoseconds d) override {
    std::lock_guard lock(mu_);
    duration_->Add({{"outcome", std::string(outcome)}}, kDurationBuckets).Observe(seconds(d));
  }
  void addReconnect(Channel channel) override {
    reconnects_[static_cast<int>(channel)]->Increment();
  }
  void addRefusal(std::string_view reason) override {
    std::lock_guard lock(mu_);
    refusals_->Add({{"reason", std::string(reason)}}).Increment();
  }
  void observeStoreWrite(std::chrono::nanoseconds latency) override {
    store_->Observe(seconds(latency));
  }
  void setDegraded(std::string_view reason, std::uint64_t migrations) override {
    std::lock_guard lock(mu_);
    degraded_->Add({{"reason", std::string(reason)}}).Set(static_cast<double>(migrations));
  }
  void setStoreWritable(bool writable) override { store_writable_->Set(writable ? 1 : 0); }
  void addUffdExists(std::uint64_t n) override { eexist_->Increment(static_cast<double>(n)); }
  void addPrecopyPages(PrecopyPages what, std::uint64_t pages) override {
    precopy_pages_[static_cast<int>(what)]->Increment(static_cast<double>(pages));
  }
  void addPrecopySwitch() override { precopy_switches_->Increment(); }
  void observePrecopyRound(std::uint64_t pages_sent, std::chrono::nanoseconds duration,
                           std::optional<double> dirty_pages_per_s) override {
    precopy_rounds_->Increment();
    precopy_round_pages_->Observe(static_cast<double>(pages_sent));
    precopy_round_seconds_->Observe(seconds(duration));
    if (dirty_pages_per_s) precopy_dirty_rate_->Observe(*dirty_pages_per_s);
  }
  void addPrecopySourceSwitch(std::string_view reason, std::uint64_t stale_pages) override {
    {
      std::lock_guard lock(mu_);
      precopy_source_switches_->Add({{"reason", std::string(reason)}}).Increment();
    }
    precopy_stale_pages_->Observe(static_cast<double>(stale_pages));
  }
  void addMigrationCpu(std::string_view role, double cpu_seconds,
                       std::uint64_t bytes_moved) override {
    std::lock_guard lock(mu_);
    const std::map<std::string, std::string> label{{"role", std::string(role)}};
    cpu_seconds_->Add(label).Increment(cpu_seconds);
    moved_bytes_->Add(label).Increment(static_cast<double>(bytes_moved));
    if (bytes_moved > 0) {
      cpu_per_gib_->Add(label, kCpuPerGibBuckets)
          .Observe(cpu_seconds / (static_cast<double>(bytes_moved) / (1ull << 30)));
    }
  }

 private:
  // The CPU a GiB costs the agent (issue 14): counters whose ratio is the fleet's figure, and
  // each finished migration's own figure as a histogram.
  void registerCpuFamilies() {
    cpu_seconds_ = &prometheus::BuildCounter()
                        .Name("lazymig_migration_cpu_seconds_total")
                        .Help(
                            "CPU seconds of finished migrations' threads (their own clocks), by "
                            "role")
                        .Labels(labels_)
                        .Register(*registry_);
    moved_bytes_ = &prometheus::BuildCounter()
                        .Name("lazymig_migration_moved_bytes_total")
                        .Help("Guest memory moved by finished migrations, by role")
                        .Labels(labels_)
                        .Register(*registry_);
    cpu_per_gib_ = &prometheus::BuildHistogram()
                        .Name("lazymig_migration_cpu_seconds_per_gib")
                        .Help("Each finished migration's CPU seconds per GiB moved, by role")
                        .Labels(labels_)
                        .Register(*registry_);
    for (auto role : kRoles) {
      cpu_seconds_->Add({{"role", std::string(role)}});
      moved_bytes_->Add({{"role", std::string(role)}});
      cpu_per_gib_->Add({{"role", std::string(role)}}, kCpuPerGibBuckets);
    }
  }

  // Pre-copy at a live source (issue 19): per round and per switch, never per migration or
  // per round number (a migration's own rounds are in its status).
  void registerPrecopySourceFamilies() {
    auto histogram = [this](const char* name, const char* help,
                            const Histogram::BucketBoundaries& buckets) {
      return &prometheus::BuildHistogram()
                  .Name(name)
                  .Help(help)
                  .Labels(labels_)
                  .Register(*registry_)
                  .Add({}, buckets);
    };
    precopy_rounds_ = &prometheus::BuildCounter()
                           .Name("lazymig_precopy_source_rounds_total")
                           .Help("Pre-copy rounds a live source ended")
                           .Labels(labels_)
                           .Register(*registry_)
                           .Add({});
    precopy_round_pages_ =
        histogram("lazymig_precopy_source_round_pages",
                  "Pages each pre-copy round sent (round 1: every page; later rounds: the pages "
                  "written since the scan before)",
                  kPrecopyPagesBuckets);
    precopy_round_seconds_ =
        histogram("lazymig_precopy_source_round_duration_seconds",
                  "How long each pre-copy round took, scan to last page", kPrecopyRoundBuckets);
    precopy_dirty_rate_ =
        histogram("lazymig_precopy_source_dirty_pages_per_second",
                  "The guest's write rate each pre-copy round's scan found (round 2 on): pages "
                  "written since the scan before, over the time since it",
                  kDirtyRateBuckets);
    precopy_stale_pages_ =
        histogram("lazymig_precopy_source_stale_pages",
                  "Pages stale at each pre-copy switch: the destination held a copy the guest "
                  "wrote since, so post-copy sends them again",
                  kPrecopyPagesBuckets);
    precopy_source_switches_ =
        &prometheus::BuildCounter()
             .Name("lazymig_precopy_source_switches_total")
             .Help("Pre-copy switches to post-copy at a live source's pause, by switch reason")
             .Labels(labels_)
             .Register(*registry_);
    for (auto reason : kPrecopySwitchReasons) {
      precopy_source_switches_->Add({{"reason", std::string(reason)}});
    }
  }

  std::shared_ptr<prometheus::Registry> registry_;
  std::map<std::string, std::string> labels_;
  std::unique_ptr<prometheus::Exposer> exposer_;
  std::array<Histogram*, 3> fault_{};
  std::array<Histogram*, kFaultPhases> phase_{};
  std::array<Counter*, 3> pages_{};
  std::array<std::array<Counter*, 2>, 2> wire_{};
  Gauge* remaining_ = nullptr;
  prometheus::Family<Gauge>* migrations_ = nullptr;
  prometheus::Family<Histogram>* duration_ = nullptr;
  std::array<Counter*, 2> reconnects_{};
  prometheus::Family<Counter>* refusals_ = nullptr;
  Histogram* store_ = nullptr;
  prometheus::Family<Gauge>* degraded_ = nullptr;
  Gauge* store_writable_ = nullptr;
  Counter* eexist_ = nullptr;
  std::array<Counter*, 3> precopy_pages_{};
  Counter* precopy_switches_ = nullptr;
  Counter* blocked_ = nullptr;
  Counter* precopy_rounds_ = nullptr;
  Histogram* precopy_round_pages_ = nullptr;
  Histogram* precopy_round_seconds_ = nullptr;
  Histogram* precopy_dirty_rate_ = nullptr;
  Histogram* precopy_stale_pages_ = nullptr;
  prometheus::Family<Counter>* precopy_source_switches_ = nullptr;
  prometheus::Family<Counter>* cpu_seconds_ = nullptr;
  prometheus::Family<Counter>* moved_bytes_ = nullptr;
  prometheus::Family<Histogram>* cpu_per_gib_ = nullptr;
  std::mutex mu_;  // the label maps of the cold-path families
};

}  // namespace

std::unique_ptr<AgentMetrics> AgentMetrics::create(const std::string& node) {
  return std::make_unique<PrometheusMetrics>(node);
}

}  // namespace lazymig::metrics
