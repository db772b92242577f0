// What both roles of a migration share: identity, state machine, persistence, reporting.
#pragma once

#include <atomic>
#include <chrono>
#include <functional>
#include <memory>
#include <mutex>
#include <optional>
#include <string>
#include <string_view>

#include <nlohmann/json.hpp>

#include "agent/core/migration_cpu.h"
#include "agent/core/migration_record.h"
#include "agent/core/migration_stats.h"
#include "base/error.h"
#include "base/latest_state_writer.h"
#include "base/log.h"
#include "config/config.h"
#include "metrics/metrics.h"
#include "store/database.h"
#include "transport/connection.h"

namespace lazymig::agent {

enum class MigrationState {
  kWaitingForVmm,     // destination: listening for the VMM's uffd handshake
  kWaitingForMemory,  // source: listening for the paused VMM's memory handover
  kRunning,           // destination: serving faults and installing the bulk stream
  kServing,           // source: serving a destination
  kCompleting,        // destination: every page installed, telling the source
  kCompleted,
  kFailed,
  kCancelled,
};

std::string_view stateName(MigrationState state);
bool isFinal(MigrationState state);

// What a migration needs from its agent; wired once in agent.cc.
struct AgentContext {
  const config::Config& config;
  std::shared_ptr<transport::TlsContext> tls_client;
  store::Database& db;
  metrics::AgentMetrics* metrics;  // may be null in tests
  // Called (from whichever thread made it so) once a migration reaches a final state; the
  // agent retires it after a grace period. May be empty in tests.
  std::function<void(const std::string& id)> on_final = {};
};

class Migration {
 public:
  Migration(std::string id, std::string role, nlohmann::json spec, AgentContext& ctx,
            std::string peer);
  virtual ~Migration() = default;
  Migration(const Migration&) = delete;
  Migration& operator=(const Migration&) = delete;

  const std::string& id() const { return id_; }
  const std::string& role() const { return role_; }
  const nlohmann::json& spec() const { return spec_; }
  MigrationState state() const { return state_.load(std::memory_order_acquire); }
  std::string reason() const;
  // The migration object of docs/control-api.md; safe from any thread.
  nlohmann::json toJson() const;

  virtual Status start() = 0;
  // After an agent restart: pick the migration up from what the dead agent persisted
  // (`runtime`, see runtime()) and from the kernel's view, and carry on.
  virtual Status resume(const RuntimeRecord& runtime) = 0;
  // force: a source releases memory a destination may still need.
  virtual Status cancel(bool force) = 0;
  // The agent is stopping: stop threads, leave the persisted record as it is.
  virtual void shutdown() = 0;

  // Why this migration's durable state lags behind it (a record or checkpoint write failed,
  // e.g. on a full state directory); empty when everything is persisted. A degraded migration
  // carries on from memory: only a restart of the agent would lose what is not persisted.
  virtual std::optional<std::string> degraded() const;
  // Writes again what failed to persist; called by the agent until degraded() is empty.
  virtual void retryPersistence();

 protected:
  // Moves to `next` unless already final; persists, logs and counts. Returns false when the
  // migration was already final (the first final state wins).
  bool setState(MigrationState next, std::string reason = {});
  // Writes the record as it is when the write runs. Callers on different threads never
  // land an older record last (LatestStateWriter); a call that finds a write running leaves
  // the newer record to it and returns.
  void persist();
  // At a final state: the migration's summary as one log line (see docs/control-api.md).
  void logReport() const;
  virtual void addDetails(nlohmann::json& out) const = 0;
  // What a restarted agent needs beyond the spec (the VMM's pid, the region layout...).
  virtual RuntimeRecord runtime() const { return {}; }
  virtual std::uint64_t pagesTotal() const = 0;
  virtual std::uint64_t pagesDone() const = 0;
  // Guest memory moved so far (pages done times the page size), for cpu_seconds_per_gib.
  virtual std::uint64_t bytesMoved() const = 0;

  AgentContext& ctx_;
  MigrationStats stats_;
  MigrationCpu cpu_;  // the role counts the loops it runs on; stopped at the final state
  log::Logger log_;
  const std::chrono::steady_clock::time_point started_ = std::chrono::steady_clock::now();

 private:
  std::string id_;
  std::string role_;
  nlohmann::json spec_;
  std::string peer_;
  std::atomic<MigrationState> state_;
  void writeRecord();

  LatestStateWriter record_writer_;
  mutable std::mutex mu_;  // guards reason_, times and record_failure_
  std::string reason_;
  std::int64_t created_ms_;
  std::int64_t updated_ms_;
  std::chrono::steady_clock::time_point finished_{};
  std::optional<std::string> record_failure_;  // why the last record write failed
};

std::int64_t unixMillisNow();
std::string isoTime(std::int64_t unix_ms);

}  // namespace lazymig::agent
