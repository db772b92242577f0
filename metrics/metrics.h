// The agent's Prometheus metrics (prometheus-cpp). Names follow Prometheus conventions:
// lazymig_ prefix, base units, _total counters, _seconds histograms. Labels are bounded:
// never a migration id or a page number (per-migration detail is the control API's job).
#pragma once

#include <chrono>
#include <cstddef>
#include <iterator>
#include <memory>
#include <optional>
#include <string>
#include <string_view>

#include "base/error.h"

namespace prometheus {
class Registry;
class Counter;
class Gauge;
class Histogram;
}  // namespace prometheus

namespace lazymig::metrics {

// How a demand fault was served.
enum class FaultPath {
  kNetwork,  // fetched from the source on the urgent channel
  kLocal,    // already installed (or staged) when the fault was read: woken only
  kRaced,    // fetched, but the bulk stream installed it first (EEXIST) -- woken
};
// Where a demand fault served over the network spent its time, in order (docs/performance.md,
// "Where a demand fault's time goes"). The six add up to the fault's latency.
enum class FaultPhase {
  kDestinationWait,  // fault read -> PageRequest handed to the urgent link (destination clock)
  kRequestWire,      // the request's share of the network floor (TCP min RTT / 2)
  kSourceWait,       // at the source before its work on the page began, as far as it saw, plus
                     // the round trip beyond the network floor and the source's own figures
  kSourceWork,       // the source reading, framing and queueing the reply (source clock)
  kReplyWire,        // the reply's share of the network floor (TCP min RTT / 2)
  kInstallWake,      // reply read -> page installed and the vCPU woken (destination clock)
};
inline constexpr std::string_view kFaultPhaseNames[] = {
    "destination_wait", "request_wire", "source_wait", "source_work", "reply_wire", "install_wake"};
inline constexpr std::size_t kFaultPhases = std::size(kFaultPhaseNames);

// How a page arrived.
enum class PagePath { kDemand, kBulk, kZero };
enum class Channel { kUrgent, kBulk };
// What a pre-copy destination did with the pages its source sent before the switch
// (docs/precopy.md): staged them, dropped them as stale, installed them from the staging.
enum class PrecopyPages { kStaged, kStaleDropped, kInstalledFromStaging };
enum class Direction { kSent, kReceived };

// Every label value the agent uses for these families exists from start-up at zero: a series
// born at 1 has no increase() in Prometheus, so the first refusal or failure would never
// raise an alert.
inline constexpr std::string_view kRefusalReasons[] = {
    // TLS (transport::RefusalReason)
    "tls_handshake", "no_certificate", "bad_certificate", "plaintext", "other",
    // the peer protocol and the migration's checks of a Hello (agent/)
    "protocol", "unknown_migration", "identity", "token", "state", "not_ready", "layout", "flood",
    "hello_timeout",
    // VMM handshakes and memory handovers (agent/core/vmm_listener.cc)
    "handshake_credentials", "handshake_malformed", "handshake_rejected", "handshake_busy",
    // guest_memfd FaultRequests the agent could not serve
    // (agent/destination/destination_migration.cc)
    "fault_request"};
inline constexpr std::string_view kMigrationStates[] = {
    "waiting_for_vmm", "waiting_for_memory", "running", "serving",
    "completing",      "completed",          "failed",  "cancelled"};
inline constexpr std::string_view kMigrationOutcomes[] = {"completed", "failed", "cancelled"};
inline constexpr std::string_view kRoles[] = {"source", "destination"};
// Why a live source's pre-copy switched to post-copy when the orchestrator paused it: the
// migration's `switch_reason` (agent/core/precopy_policy.h, agent/source/precopy_source.h), or
// paused_before_ready when the pause came before any reason to switch.
inline constexpr std::string_view kPrecopySwitchReasons[] = {
    "few_pages_left",    "not_shrinking",   "rounds_done",        "deadline",
    "no_write_tracking", "tracking_failed", "paused_before_ready"};
// Why a migration is degraded (its durable state lags, it carries on from memory).
inline constexpr std::string_view kDegradedReasons[] = {"store_full", "store_error"};

class AgentMetrics {
 public:
  // `node` becomes a constant label on every series.
  static std::unique_ptr<AgentMetrics> create(const std::string& node);
  virtual ~AgentMetrics() = default;

  // Serves /metrics on host:port (port 0 picks one); returns the bound port.
  virtual Result<std::uint16_t> startExposer(const std::string& address) = 0;
  virtual std::shared_ptr<prometheus::Registry> registry() const = 0;
  // The exposition text (as /metrics serves it), for tests and `lazymig` diagnostics.
  virtual std::string scrapeText() const = 0;

  // Also adds the latency to the vCPU blocked time.
  virtual void observeFault(FaultPath path, std::chrono::nanoseconds latency) = 0;
  // One phase of a demand fault served over the network (lazymig_fault_phase_seconds).
  virtual void observeFaultPhase(FaultPhase phase, std::chrono::nanoseconds duration) = 0;
  virtual void addPages(PagePath path, std::uint64_t pages) = 0;
  virtual void addWireBytes(Channel channel, Direction direction, std::uint64_t bytes) = 0;
  virtual void addPagesRemaining(std::int64_t delta) = 0;  // gauge, summed over migrations
  // Moves one migration between states (from "" when created, to "" when forgotten).
  virtual void migrationState(std::string_view from, std::string_view to) = 0;
  virtual void observeMigrationDuration(std::string_view outcome, std::chrono::nanoseconds d) = 0;
  virtual void addReconnect(Channel channel) = 0;
  virtual void addRefusal(std::string_view reason) = 0;  // TLS/auth/handshake refusals
  virtual void observeStoreWrite(std::chrono::nanoseconds latency) = 0;
  // Live migrations whose record or checkpoint cannot be persisted, by reason (one of
  // kDegradedReasons); and whether the state directory takes writes.
  virtual void setDegraded(std::string_view reason, std::uint64_t migrations) = 0;
  virtual void setStoreWritable(bool writable) = 0;
  virtual void addUffdExists(std::uint64_t n) = 0;  // EEXIST races on install
  // Pre-copy at a destination: pages by what became of them, and switches heard (the source's
  // StalePages frame with `last`).
  virtual void addPrecopyPages(PrecopyPages what, std::uint64_t pages) = 0;
  virtual void addPrecopySwitch() = 0;
  // Pre-copy at a live source, one round ended: the pages it sent, how long it took, and the
  // rate at which its scan found pages written (absent for round 1, whose pages are every page).
  virtual void observePrecopyRound(std::uint64_t pages_sent, std::chrono::nanoseconds duration,
                                   std::optional<double> dirty_pages_per_s) = 0;
  // Pre-copy at a live source, the switch at the pause: why (one of kPrecopySwitchReasons) and
  // how many pages the destination held a copy of that the guest wrote since (stale).
  virtual void addPrecopySourceSwitch(std::string_view reason, std::uint64_t stale_pages) = 0;
  // A migration reached its final state: the CPU seconds of its threads (their own clocks)
  // and the guest memory it moved. `role` is one of kRoles.
  virtual void addMigrationCpu(std::string_view role, double cpu_seconds,
                               std::uint64_t bytes_moved) = 0;
};

}  // namespace lazymig::metrics
